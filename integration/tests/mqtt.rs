//! Issue 21, MQTT, end to end against the machine's Mosquitto (127.0.0.1:1883, anonymous):
//! MQTT channels (`PUT /v1/inbound/mqtt/{name}`) feeding a real service in real workers, and
//! outgoing MQTT connections (`PUT /v1/outgoing/mqtt/{name}`) used by services with
//! `self.out.mqtt[name].publish(...)`. The test's own side of the broker is a rumqttc
//! client. Every test uses topics of its own (a random suffix) and clears what it retained.
//!
//! The channel's service records each call (topic, QoS, flags, payload, and whether it
//! succeeded) as a JSON line in a file named after the channel, so the tests count what was
//! processed, and how many times.

use oxbus_integration::api::{admin, text};
use oxbus_integration::*;
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, Outgoing, Publish, QoS};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::mpsc;

const BROKER: &str = "mqtt://127.0.0.1:1883";
const WAIT: Duration = Duration::from_secs(30);

const SERVICES: &str = r#"import base64
import json
import os
import time

from oxbus import Service

SEEN = '/tmp/oxbus-mqtt-tests'


def failure(e):
    return {'error': type(e).__name__, 'bases': [c.__name__ for c in type(e).__mro__],
            'message': str(e), 'errno': getattr(e, 'error', None)}


class OnMessage(Service):
    name = 'mqtt.on_message'

    def handle(self):
        m = self.request.mqtt
        raw = self.request.raw_request
        path = os.path.join(SEEN, self.channel.name)
        # 'hold:<tag>' says it started, then runs until the test releases the channel.
        if raw.startswith(b'hold:'):
            open(path + '.started.' + raw.decode()[5:], 'w').close()
            for _ in range(1200):
                if os.path.exists(path + '.release'):
                    break
                time.sleep(0.05)
        # 'fail-once:<tag>' fails on its first delivery only ('fail:' always).
        marker = path + '.' + raw.decode('latin-1').split(':', 1)[-1] + '.failed'
        fail = raw.startswith(b'fail:') or (
            raw.startswith(b'fail-once:') and not os.path.exists(marker))
        entry = {'topic': m.topic, 'qos': m.qos, 'retain': m.retain, 'dup': m.dup,
                 'pkid': m.pkid, 'payload': base64.b64encode(raw).decode(),
                 'channel': [self.channel.type, self.channel.name],
                 'payload_is_raw': self.request.payload == raw, 'ok': not fail}
        with open(path + '.jsonl', 'a') as f:
            f.write(json.dumps(entry) + '\n')
        if fail:
            open(marker, 'w').close()
            raise ValueError('failing on purpose')


class Publish(Service):
    name = 'mqtt.publish'

    def handle(self):
        p = self.request.payload
        payload = base64.b64decode(p['b64']) if 'b64' in p else p['payload']
        try:
            self.out.mqtt[p['conn']].publish(p['topic'], payload, qos=p.get('qos', 1),
                                             retain=p.get('retain', False))
        except Exception as e:
            self.response.payload = failure(e)
            return
        self.response.payload = {'ok': True}


class PublishAsync(Service):
    name = 'mqtt.apublish'

    async def handle(self):
        p = self.request.payload
        try:
            await self.out.mqtt[p['conn']].apublish(p['topic'], p['payload'],
                                                    qos=p.get('qos', 1))
        except Exception as e:
            self.response.payload = failure(e)
            return
        self.response.payload = {'ok': True}
"#;

fn env() -> Env {
    Env::new()
        .workers(2)
        .service("mqtt_svc.py", SERVICES)
        .channel("/publish", &["POST"], "mqtt.publish")
        .channel("/apublish", &["POST"], "mqtt.apublish")
}

fn unique(tag: &str) -> String {
    format!(
        "{tag}{}x{}x{}",
        std::process::id(),
        next_id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    )
}

fn seen_dir() -> PathBuf {
    let d = PathBuf::from("/tmp/oxbus-mqtt-tests");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Every call the channel's service recorded, in order. A line still being written (no
/// newline yet: a read may see part of an append) is not one yet.
fn seen(channel: &str) -> Vec<Value> {
    let path = seen_dir().join(format!("{channel}.jsonl"));
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let done = text.rfind('\n').map_or("", |end| &text[..end]);
    done.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn payload_of(entry: &Value) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(entry["payload"].as_str().unwrap())
        .unwrap()
}

fn clean_seen(channel: &str) {
    for e in std::fs::read_dir(seen_dir()).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with(channel) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Creates or replaces an MQTT channel; asserts 200/201.
async fn put_channel(srv: &Server, name: &str, def: Value) {
    let r = admin(srv, "PUT", &format!("/v1/inbound/mqtt/{name}"), def.clone()).await;
    assert!(
        r.status == 200 || r.status == 201,
        "PUT channel {name} {def}: {} {}",
        r.status,
        text(&r)
    );
}

async fn status(srv: &Server, name: &str) -> Value {
    admin(
        srv,
        "GET",
        &format!("/v1/inbound/mqtt/{name}/stats"),
        Value::Null,
    )
    .await
    .json()
}

/// Waits until the channel's session is connected and its subscriptions acknowledged.
async fn wait_subscribed(srv: &Server, name: &str) {
    eventually(WAIT, &format!("channel {name} subscribed"), || async {
        let s = status(srv, name).await;
        (s["connected"] == true && s["subscribed"] == true).then_some(())
    })
    .await;
}

/// The test's own MQTT client: publishes, and collects what its subscriptions receive.
struct TestClient {
    client: AsyncClient,
    received: mpsc::UnboundedReceiver<Publish>,
    acks: mpsc::UnboundedReceiver<u16>,
    task: tokio::task::JoinHandle<()>,
}

impl TestClient {
    async fn connect(tag: &str) -> TestClient {
        let mut o = MqttOptions::new(unique(&format!("t-{tag}-")), "127.0.0.1", 1883);
        o.set_keep_alive(Duration::from_secs(10))
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(o, 100);
        let (tx, received) = mpsc::unbounded_channel();
        let (ack_tx, acks) = mpsc::unbounded_channel();
        let (up_tx, up_rx) = tokio::sync::oneshot::channel();
        let mut up_tx = Some(up_tx);
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                        if let Some(t) = up_tx.take() {
                            let _ = t.send(());
                        }
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        let _ = tx.send(p);
                    }
                    Ok(Event::Incoming(Incoming::PubAck(a))) => {
                        let _ = ack_tx.send(a.pkid);
                    }
                    Ok(Event::Incoming(Incoming::SubAck(a))) => {
                        let _ = ack_tx.send(a.pkid);
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                    Ok(_) => {}
                    Err(e) => panic!("the test's MQTT client failed (is Mosquitto on 1883?): {e}"),
                }
            }
        });
        tokio::time::timeout(WAIT, up_rx)
            .await
            .expect("the test's MQTT client connects to 127.0.0.1:1883")
            .unwrap();
        TestClient {
            client,
            received,
            acks,
            task,
        }
    }

    async fn next_ack(&mut self) {
        tokio::time::timeout(WAIT, self.acks.recv())
            .await
            .expect("an ack from the broker")
            .unwrap();
    }

    async fn subscribe(&mut self, filter: &str, qos: QoS) {
        self.client.subscribe(filter, qos).await.unwrap();
        self.next_ack().await;
    }

    /// Publishes and waits for the broker's PUBACK (QoS 1 only).
    async fn publish(&mut self, topic: &str, payload: &[u8], qos: QoS, retain: bool) {
        self.client
            .publish(topic, qos, retain, payload.to_vec())
            .await
            .unwrap();
        if qos == QoS::AtLeastOnce {
            self.next_ack().await;
        }
    }

    async fn next(&mut self) -> Publish {
        tokio::time::timeout(WAIT, self.received.recv())
            .await
            .expect("a message for the test's subscription")
            .unwrap()
    }

    async fn close(self) {
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(WAIT, self.task).await;
    }
}

async fn publish_via(srv: &Server, path: &str, doc: Value) -> Value {
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

// ---------------------------------------------------------------------------------------
// Channels

#[tokio::test]
async fn a_service_receives_every_message_exactly_as_published() {
    let srv = env().start().await;
    let name = unique("recv");
    let base = format!("oxbus-test/{name}");
    clean_seen(&name);
    put_channel(
        &srv,
        &name,
        json!({"address": BROKER, "service": "mqtt.on_message",
               "topics": [{"filter": format!("{base}/q1/#"), "qos": 1},
                          {"filter": format!("{base}/+/zero"), "qos": 0}]}),
    )
    .await;
    wait_subscribed(&srv, &name).await;

    let mut pubc = TestClient::connect("recv").await;
    const N: usize = 40;
    let mut sent = Vec::new();
    for i in 0..N {
        // Binary payloads, of several sizes, the empty one included.
        let payload: Vec<u8> = (0..(i * 37) % 300).map(|b| (b * 7 + i) as u8).collect();
        let topic = format!("{base}/q1/dev{}", i % 3);
        pubc.publish(&topic, &payload, QoS::AtLeastOnce, false)
            .await;
        sent.push((topic, payload));
    }
    let zero_topic = format!("{base}/x/zero");
    pubc.publish(&zero_topic, b"qos zero", QoS::AtMostOnce, false)
        .await;
    pubc.close().await;

    let got = eventually(WAIT, "every message processed", || async {
        let s = seen(&name);
        (s.len() > N).then_some(s)
    })
    .await;
    assert_eq!(got.len(), N + 1, "{got:?}");
    let mut q1: Vec<(String, Vec<u8>)> = got
        .iter()
        .filter(|e| e["qos"] == 1)
        .map(|e| (e["topic"].as_str().unwrap().to_owned(), payload_of(e)))
        .collect();
    let mut want = sent.clone();
    q1.sort();
    want.sort();
    assert_eq!(q1, want, "the QoS 1 messages as published");
    let zero: Vec<&Value> = got.iter().filter(|e| e["qos"] == 0).collect();
    assert_eq!(zero.len(), 1);
    assert_eq!(zero[0]["topic"], json!(zero_topic));
    assert_eq!(payload_of(zero[0]), b"qos zero");
    for e in &got {
        assert_eq!(e["channel"], json!(["mqtt", name]));
        assert_eq!(e["payload_is_raw"], true);
        assert_eq!(e["ok"], true);
        assert_eq!(e["retain"], false);
    }
    let st = status(&srv, &name).await;
    assert_eq!(st["acked"], json!(N + 1), "{st}");
    assert_eq!(st["failed"], 0);
    let id = st["client_id"].as_str().unwrap();
    assert!(id.starts_with(&format!("oxbus:{name}:")), "{st}");

    // Its figures are metrics too.
    let metrics = srv
        .admin("GET", "/metrics", Some(&srv.admin_token()), b"")
        .await;
    let m = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(
        m.contains(&format!(
            "oxbus_inbound_messages_total{{type=\"mqtt\",channel=\"{name}\",outcome=\"acked\"}} {}",
            N + 1
        )),
        "{m}"
    );
    assert!(m.contains(&format!(
        "oxbus_inbound_connected{{type=\"mqtt\",channel=\"{name}\"}} 1"
    )));

    let r = admin(
        &srv,
        "DELETE",
        &format!("/v1/inbound/mqtt/{name}"),
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    clean_seen(&name);
    srv.assert_no_errors(&[]);
}

#[tokio::test]
async fn a_failed_message_is_not_acked_and_comes_again() {
    let srv = env().start().await;
    let name = unique("fail");
    let topic = format!("oxbus-test/{name}/in");
    clean_seen(&name);
    put_channel(
        &srv,
        &name,
        json!({"address": BROKER, "service": "mqtt.on_message",
               "topics": [{"filter": topic, "qos": 1}]}),
    )
    .await;
    wait_subscribed(&srv, &name).await;
    let mut pubc = TestClient::connect("fail").await;
    pubc.publish(&topic, b"fail-once:a", QoS::AtLeastOnce, false)
        .await;
    pubc.publish(&topic, b"fine", QoS::AtLeastOnce, false).await;
    pubc.close().await;

    // The failed one is processed again (the broker sent it again: not acknowledged), and
    // then succeeds; the other one is processed (at least once, and acknowledged).
    let got = eventually(WAIT, "the failed message processed again", || async {
        let s = seen(&name);
        let again = s
            .iter()
            .filter(|e| payload_of(e) == b"fail-once:a" && e["ok"] == true)
            .count();
        let fine = s
            .iter()
            .any(|e| payload_of(e) == b"fine" && e["ok"] == true);
        (again == 1 && fine).then_some(s)
    })
    .await;
    let attempts: Vec<&Value> = got
        .iter()
        .filter(|e| payload_of(e) == b"fail-once:a")
        .collect();
    assert_eq!(attempts.len(), 2, "{got:?}");
    assert_eq!(attempts[0]["ok"], false);
    assert_eq!(attempts[1]["ok"], true);
    assert_eq!(attempts[1]["dup"], true, "the broker marks a redelivery");
    let st = status(&srv, &name).await;
    assert_eq!(st["failed"], 1, "{st}");
    assert!(
        st["last_error"]
            .as_str()
            .unwrap()
            .contains(&format!("MQTT channel {name}")),
        "{st}"
    );

    // Once acknowledged it does not come again: a new session of the channel (an edit that
    // restarts it) gets nothing more.
    put_channel(
        &srv,
        &name,
        json!({"address": BROKER, "service": "mqtt.on_message", "keepalive_s": 20,
               "topics": [{"filter": topic, "qos": 1}]}),
    )
    .await;
    wait_subscribed(&srv, &name).await;
    let mut probe = TestClient::connect("fail2").await;
    probe
        .publish(&topic, b"marker", QoS::AtLeastOnce, false)
        .await;
    probe.close().await;
    let after = eventually(WAIT, "the marker processed", || async {
        let s = seen(&name);
        s.iter().any(|e| payload_of(e) == b"marker").then_some(s)
    })
    .await;
    assert_eq!(
        after.len(),
        got.len() + 1,
        "nothing acknowledged came again: {after:?}"
    );

    admin(
        &srv,
        "DELETE",
        &format!("/v1/inbound/mqtt/{name}"),
        Value::Null,
    )
    .await;
    clean_seen(&name);
    srv.assert_no_errors(&["failing on purpose"]);
}

#[tokio::test]
async fn qos1_published_while_the_server_was_stopped_arrive_after_it_starts() {
    // The session is this server's (`oxbus:<channel>:<server>`): the server keeps its name
    // across the restart, as a configured one does (the harness's default has the port in
    // it, which changes).
    let srv = env()
        .set("cluster", "server", &format!("\"{}\"", unique("srv")))
        .start()
        .await;
    let name = unique("away");
    let topic = format!("oxbus-test/{name}/in");
    clean_seen(&name);
    put_channel(
        &srv,
        &name,
        json!({"address": BROKER, "service": "mqtt.on_message",
               "topics": [{"filter": topic, "qos": 1}]}),
    )
    .await;
    wait_subscribed(&srv, &name).await;
    let mut pubc = TestClient::connect("away").await;
    pubc.publish(&topic, b"before", QoS::AtLeastOnce, false)
        .await;
    eventually(WAIT, "the first message processed", || async {
        (!seen(&name).is_empty()).then_some(())
    })
    .await;

    // SIGTERM: the channel disconnects and keeps its session.
    let mut srv = srv;
    srv.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(srv.wait_exit(WAIT), Some(0), "log:\n{}", srv.log());
    const AWAY: usize = 10;
    for i in 0..AWAY {
        pubc.publish(
            &topic,
            format!("away-{i}").as_bytes(),
            QoS::AtLeastOnce,
            false,
        )
        .await;
    }
    pubc.close().await;
    let srv = srv.spawn_again();
    srv.wait_ready().await;

    let got = eventually(WAIT, "the messages published while away", || async {
        let s = seen(&name);
        (s.len() > AWAY).then_some(s)
    })
    .await;
    let mut away: Vec<String> = got
        .iter()
        .map(|e| String::from_utf8(payload_of(e)).unwrap())
        .filter(|p| p.starts_with("away-"))
        .collect();
    away.sort();
    away.dedup();
    let mut want: Vec<String> = (0..AWAY).map(|i| format!("away-{i}")).collect();
    want.sort();
    assert_eq!(away, want, "{got:?}");

    admin(
        &srv,
        "DELETE",
        &format!("/v1/inbound/mqtt/{name}"),
        Value::Null,
    )
    .await;
    clean_seen(&name);
    srv.assert_no_errors(&[]);
}

/// Publishes `marker` on `topic` again and again until the channel processed one (the
/// channel's subscription may not be in place yet: an event to wait for, not a time).
async fn until_processed(pubc: &mut TestClient, name: &str, topic: &str, marker: &str) {
    let end = std::time::Instant::now() + WAIT;
    for n in 0.. {
        pubc.publish(
            topic,
            format!("{marker}-{n}").as_bytes(),
            QoS::AtLeastOnce,
            false,
        )
        .await;
        // Each publish is given a moment to be processed (polled, not slept through).
        let got = tokio::time::timeout(Duration::from_millis(500), async {
            loop {
                if seen(name).iter().any(|e| {
                    String::from_utf8(payload_of(e))
                        .unwrap()
                        .starts_with(marker)
                }) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        if got.is_ok() {
            return;
        }
        assert!(
            std::time::Instant::now() < end,
            "timed out waiting for {marker} on {topic}: {:?}",
            seen(name)
        );
    }
}

#[tokio::test]
async fn a_live_edit_moves_the_subscription_and_a_delete_ends_the_session() {
    let srv = env().start().await;
    let name = unique("edit");
    let (a, b) = (
        format!("oxbus-test/{name}/a"),
        format!("oxbus-test/{name}/b"),
    );
    clean_seen(&name);
    let def = |filter: &str| {
        json!({"address": BROKER, "service": "mqtt.on_message",
               "topics": [{"filter": filter, "qos": 1}]})
    };
    put_channel(&srv, &name, def(&a)).await;
    wait_subscribed(&srv, &name).await;
    let mut pubc = TestClient::connect("edit").await;
    until_processed(&mut pubc, &name, &a, "first-a").await;

    // The edit: the same session, now on b only (a unsubscribed).
    put_channel(&srv, &name, def(&b)).await;
    until_processed(&mut pubc, &name, &b, "first-b").await;
    pubc.publish(&a, b"late-a", QoS::AtLeastOnce, false).await;
    until_processed(&mut pubc, &name, &b, "after-a").await;
    assert!(
        !seen(&name).iter().any(|e| payload_of(e) == b"late-a"),
        "a is no longer subscribed: {:?}",
        seen(&name)
    );

    // A delete ends the broker's session: a QoS 1 message published meanwhile is not kept
    // for a channel of the same name created again (a kept session would deliver it).
    let r = admin(
        &srv,
        "DELETE",
        &format!("/v1/inbound/mqtt/{name}"),
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    eventually(WAIT, "the session ended", || async {
        srv.log()
            .contains(&format!(
                "MQTT channel {name} ({BROKER}): the broker's session ended"
            ))
            .then_some(())
    })
    .await;
    pubc.publish(&b, b"while-deleted", QoS::AtLeastOnce, false)
        .await;
    put_channel(&srv, &name, def(&b)).await;
    until_processed(&mut pubc, &name, &b, "recreated").await;
    assert!(
        !seen(&name)
            .iter()
            .any(|e| payload_of(e) == b"while-deleted"),
        "{:?}",
        seen(&name)
    );
    pubc.close().await;
    admin(
        &srv,
        "DELETE",
        &format!("/v1/inbound/mqtt/{name}"),
        Value::Null,
    )
    .await;
    clean_seen(&name);
    srv.assert_no_errors(&[]);
}

#[tokio::test]
async fn channel_definitions_are_checked_and_the_password_is_sealed() {
    let srv = env().start().await;
    let name = unique("defs");
    for (def, needle) in [
        (
            json!({"address": BROKER, "service": "s", "topics": [{"filter": "a/#/b"}]}),
            "topics[0].filter",
        ),
        (
            json!({"address": BROKER, "service": "s", "topics": [{"filter": "a", "qos": 2}]}),
            "QoS 2",
        ),
        (
            json!({"address": "amqp://h", "service": "s", "topics": [{"filter": "a"}]}),
            "mqtt://host",
        ),
        (
            json!({"address": BROKER, "service": "s", "topics": []}),
            "at least one",
        ),
    ] {
        let r = admin(
            &srv,
            "PUT",
            &format!("/v1/inbound/mqtt/{name}"),
            def.clone(),
        )
        .await;
        assert_eq!(r.status, 400, "{def}: {}", text(&r));
        assert!(text(&r).contains(needle), "{def}: {}", text(&r));
        assert!(
            text(&r).contains(&format!("MQTT channel {name}")),
            "{}",
            text(&r)
        );
    }
    let secret = "hunter2-mqtt";
    // Anonymous Mosquitto accepts any credentials; the password must never show.
    put_channel(
        &srv,
        &name,
        json!({"address": BROKER, "service": "mqtt.on_message", "username": "u",
               "password": secret, "is_active": false,
               "topics": [{"filter": format!("oxbus-test/{name}")}]}),
    )
    .await;
    let got = admin(
        &srv,
        "GET",
        &format!("/v1/inbound/mqtt/{name}"),
        Value::Null,
    )
    .await;
    assert_eq!(got.json()["has_secret"], true);
    assert!(got.json().get("sealed").is_none());
    let list = admin(&srv, "GET", "/v1/inbound/mqtt", Value::Null).await;
    assert!(!text(&list).contains(secret));
    let export = admin(&srv, "GET", "/v1/config", Value::Null).await;
    assert!(!text(&export).contains(secret));
    assert!(text(&export).contains(&name), "{}", text(&export));
    // Another broker without the password again is refused.
    let r = admin(
        &srv,
        "PUT",
        &format!("/v1/inbound/mqtt/{name}"),
        json!({"address": "mqtt://127.0.0.2:1883", "service": "mqtt.on_message",
               "username": "u", "is_active": false,
               "topics": [{"filter": format!("oxbus-test/{name}")}]}),
    )
    .await;
    assert_eq!(r.status, 400, "{}", text(&r));
    assert!(text(&r).contains("give password again"), "{}", text(&r));
    let r = admin(
        &srv,
        "DELETE",
        &format!("/v1/inbound/mqtt/{name}"),
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(!srv.log().contains(secret));
    srv.assert_no_errors(&[]);
}

// ---------------------------------------------------------------------------------------
// Outgoing

async fn put_conn(srv: &Server, name: &str, def: Value) {
    let r = admin(
        srv,
        "PUT",
        &format!("/v1/outgoing/mqtt/{name}"),
        def.clone(),
    )
    .await;
    assert!(
        r.status == 200 || r.status == 201,
        "PUT mqtt {name} {def}: {} {}",
        r.status,
        text(&r)
    );
}

#[tokio::test]
async fn outgoing_publish_qos0_qos1_and_retain_reach_a_subscriber() {
    let srv = env().start().await;
    let conn = unique("out");
    let base = format!("oxbus-test/{conn}");
    put_conn(&srv, &conn, json!({"address": BROKER})).await;
    let mut sub = TestClient::connect("sub").await;
    sub.subscribe(&format!("{base}/#"), QoS::AtLeastOnce).await;

    use base64::Engine;
    let binary: Vec<u8> = (0..=255u8).collect();
    let r = publish_via(
        &srv,
        "/publish",
        json!({"conn": conn, "topic": format!("{base}/bin"),
               "b64": base64::engine::general_purpose::STANDARD.encode(&binary)}),
    )
    .await;
    assert_eq!(r, json!({"ok": true}));
    let m = sub.next().await;
    assert_eq!(
        (m.topic.as_str(), m.qos),
        (format!("{base}/bin").as_str(), QoS::AtLeastOnce)
    );
    assert_eq!(&m.payload[..], &binary[..]);

    let r = publish_via(
        &srv,
        "/publish",
        json!({"conn": conn, "topic": format!("{base}/zero"), "payload": {"n": 1}, "qos": 0}),
    )
    .await;
    assert_eq!(r, json!({"ok": true}));
    let m = sub.next().await;
    assert_eq!(m.qos, QoS::AtMostOnce);
    assert_eq!(
        serde_json::from_slice::<Value>(&m.payload).unwrap(),
        json!({"n": 1})
    );

    let r = publish_via(
        &srv,
        "/apublish",
        json!({"conn": conn, "topic": format!("{base}/async"), "payload": "żółw"}),
    )
    .await;
    assert_eq!(r, json!({"ok": true}));
    let m = sub.next().await;
    assert_eq!(&m.payload[..], "żółw".as_bytes());

    // Retained: a subscriber that comes later gets it, marked retained.
    let retained = format!("{base}/retained");
    let r = publish_via(
        &srv,
        "/publish",
        json!({"conn": conn, "topic": retained, "payload": "last value", "retain": true}),
    )
    .await;
    assert_eq!(r, json!({"ok": true}));
    let _ = sub.next().await;
    let mut late = TestClient::connect("late").await;
    late.subscribe(&retained, QoS::AtLeastOnce).await;
    let m = late.next().await;
    assert!(m.retain);
    assert_eq!(&m.payload[..], b"last value");
    // Cleared (an empty retained message), so the broker keeps nothing of the test.
    late.publish(&retained, b"", QoS::AtLeastOnce, true).await;
    late.close().await;
    sub.close().await;

    // Its figures.
    let st = admin(
        &srv,
        "GET",
        &format!("/v1/outgoing/mqtt/{conn}/stats"),
        Value::Null,
    )
    .await;
    assert_eq!(st.status, 200, "{}", text(&st));
    assert_eq!(st.json()["calls"], 4, "{}", text(&st));
    assert_eq!(st.json()["type"], "mqtt");
    let ping = admin(
        &srv,
        "POST",
        &format!("/v1/outgoing/mqtt/{conn}/ping"),
        Value::Null,
    )
    .await;
    assert_eq!(ping.json()["ok"], true, "{}", text(&ping));
    admin(
        &srv,
        "DELETE",
        &format!("/v1/outgoing/mqtt/{conn}"),
        Value::Null,
    )
    .await;
    srv.assert_no_errors(&[]);
}

#[tokio::test]
async fn outgoing_errors_are_exceptions_naming_the_connection() {
    let srv = env().start().await;
    let conn = unique("err");
    put_conn(&srv, &conn, json!({"address": BROKER})).await;

    let r = publish_via(
        &srv,
        "/publish",
        json!({"conn": "no-such-conn", "topic": "a", "payload": "x"}),
    )
    .await;
    assert!(failed_with(&r, "UnknownConnection").contains("no-such-conn"));
    let r = publish_via(
        &srv,
        "/publish",
        json!({"conn": conn, "topic": "oxbus-test/+/x", "payload": "x"}),
    )
    .await;
    let m = failed_with(&r, "InvalidCall");
    assert!(
        m.contains(&format!("MQTT connection {conn}")) && m.contains("wildcard"),
        "{m}"
    );
    let r = publish_via(
        &srv,
        "/publish",
        json!({"conn": conn, "topic": "a", "payload": "x", "qos": 2}),
    )
    .await;
    assert!(failed_with(&r, "InvalidCall").contains("QoS 2"));

    // A broker that is not there: `connect` within the connection's timeout, naming it.
    let down = unique("down");
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    put_conn(
        &srv,
        &down,
        json!({"address": format!("mqtt://127.0.0.1:{closed}"), "timeout_ms": 800}),
    )
    .await;
    let r = publish_via(
        &srv,
        "/publish",
        json!({"conn": down, "topic": "oxbus-test/down", "payload": "x"}),
    )
    .await;
    let m = failed_with(&r, "OutgoingConnectionError");
    assert_eq!(r["errno"], "connect", "{r}");
    assert!(m.contains(&format!("MQTT connection {down}")), "{m}");
    let ping = admin(
        &srv,
        "POST",
        &format!("/v1/outgoing/mqtt/{down}/ping"),
        Value::Null,
    )
    .await;
    assert_eq!(ping.json()["ok"], false, "{}", text(&ping));
    assert!(text(&ping).contains(&down), "{}", text(&ping));
    let st = admin(
        &srv,
        "GET",
        &format!("/v1/outgoing/mqtt/{down}/stats"),
        Value::Null,
    )
    .await;
    assert_eq!(st.json()["errors"], 1, "{}", text(&st));

    // Definitions are checked.
    let r = admin(
        &srv,
        "PUT",
        &format!("/v1/outgoing/mqtt/{conn}"),
        json!({"address": "http://h"}),
    )
    .await;
    assert_eq!(r.status, 400, "{}", text(&r));
    for n in [&conn, &down] {
        admin(
            &srv,
            "DELETE",
            &format!("/v1/outgoing/mqtt/{n}"),
            Value::Null,
        )
        .await;
    }
    srv.assert_no_errors(&[]);
}

#[tokio::test]
async fn an_import_seals_the_mqtt_passwords_and_again_is_no_change() {
    let srv = env().start().await;
    let (ch, conn) = (unique("imp"), unique("impout"));
    let secret = "imported-mqtt-pw";
    let doc = json!({
        "channel_mqtt": [{"name": ch, "address": BROKER, "username": "u", "password": secret,
                          "service": "mqtt.on_message", "is_active": false,
                          "topics": [{"filter": format!("oxbus-test/{ch}/#")}]}],
        "outgoing_mqtt": [{"name": conn, "address": BROKER, "username": "u",
                           "password": secret}],
    });
    let r = admin(&srv, "POST", "/v1/config", doc.clone()).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert!(!text(&r).contains(secret));
    let r = admin(&srv, "POST", "/v1/config", doc).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(
        r.json()["changes"],
        json!([]),
        "a password sealed again is no change"
    );

    let export = admin(&srv, "GET", "/v1/config", Value::Null).await.json();
    assert!(!export.to_string().contains(secret));
    for key in ["channel_mqtt", "outgoing_mqtt"] {
        let sealed = export[key][0]["sealed"].as_str().unwrap_or("");
        assert!(sealed.starts_with("oxbus1:"), "{key}: {export}");
    }
    // The export imports back as it is (sealed values open with this server's key).
    let back =
        json!({"channel_mqtt": export["channel_mqtt"], "outgoing_mqtt": export["outgoing_mqtt"]});
    let r = admin(&srv, "POST", "/v1/config", back).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(r.json()["changes"], json!([]), "{}", text(&r));

    // Refused in full: a bad entry names the list, the entry and the field.
    let r = admin(
        &srv,
        "POST",
        "/v1/config",
        json!({"channel_mqtt": [{"name": "x", "address": BROKER, "service": "s",
                                 "topics": [{"filter": "a", "qos": 2}]}]}),
    )
    .await;
    assert_eq!(r.status, 400, "{}", text(&r));
    assert!(text(&r).contains("QoS 2"), "{}", text(&r));

    let audit = admin(&srv, "GET", "/v1/audit?limit=100", Value::Null).await;
    assert!(text(&audit).contains("inbound_mqtt"), "{}", text(&audit));
    assert!(text(&audit).contains("outgoing_mqtt"), "{}", text(&audit));
    assert!(!srv.log().contains(secret));
    srv.assert_no_errors(&[]);
}

// ---------------------------------------------------------------------------------------
// Review findings: drain, QoS 0 bound, a cut connection, silent and breaking brokers, CLI

/// How many times the channel's service processed each payload.
fn processed_counts(name: &str) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for e in seen(name) {
        *m.entry(String::from_utf8(payload_of(&e)).unwrap())
            .or_insert(0) += 1;
    }
    m
}

/// The `hold:` calls of channel `name` that started.
fn started(name: &str) -> usize {
    std::fs::read_dir(seen_dir())
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{name}.started."))
        })
        .count()
}

fn release(name: &str) {
    std::fs::write(seen_dir().join(format!("{name}.release")), b"").unwrap();
}

#[tokio::test]
async fn sigterm_lets_slow_calls_finish_acks_them_once_and_they_do_not_come_again() {
    let srv = env()
        .set("cluster", "server", &format!("\"{}\"", unique("srv")))
        .start()
        .await;
    let name = unique("drain");
    let topic = format!("oxbus-test/{name}/in");
    clean_seen(&name);
    put_channel(
        &srv,
        &name,
        json!({"address": BROKER, "service": "mqtt.on_message",
               "topics": [{"filter": topic, "qos": 1}]}),
    )
    .await;
    wait_subscribed(&srv, &name).await;
    let mut pubc = TestClient::connect("drain").await;
    const SLOW: usize = 3;
    for i in 0..SLOW {
        pubc.publish(
            &topic,
            format!("hold:{i}").as_bytes(),
            QoS::AtLeastOnce,
            false,
        )
        .await;
    }
    eventually(WAIT, "every slow call started", || async {
        (started(&name) == SLOW).then_some(())
    })
    .await;

    // SIGTERM while the calls run; they are let go only once the server is stopping.
    let mut srv = srv;
    srv.signal(nix::sys::signal::Signal::SIGTERM);
    eventually(WAIT, "the server draining", || async {
        srv.log().contains("SIGTERM: draining").then_some(())
    })
    .await;
    assert!(
        seen(&name).is_empty(),
        "a slow call ended before its release"
    );
    release(&name);
    assert_eq!(srv.wait_exit(WAIT), Some(0), "log:\n{}", srv.log());
    let counts = processed_counts(&name);
    assert_eq!(counts.len(), SLOW, "{counts:?}");
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");

    // After a restart the session resumes: nothing of the drained calls comes again (they
    // were acknowledged before the DISCONNECT). A later message shows the session works,
    // and the broker sends unacknowledged ones before it.
    let srv = srv.spawn_again();
    srv.wait_ready().await;
    until_processed(&mut pubc, &name, &topic, "after").await;
    let counts = processed_counts(&name);
    for i in 0..SLOW {
        assert_eq!(counts.get(&format!("hold:{i}")), Some(&1), "{counts:?}");
    }
    pubc.close().await;
    admin(
        &srv,
        "DELETE",
        &format!("/v1/inbound/mqtt/{name}"),
        Value::Null,
    )
    .await;
    clean_seen(&name);
    srv.assert_no_errors(&[]);
}

#[tokio::test]
async fn qos0_calls_are_bounded_per_channel_and_the_rest_counted_dropped() {
    let srv = env().start().await;
    let name = unique("qos0");
    let topic = format!("oxbus-test/{name}/in");
    clean_seen(&name);
    put_channel(
        &srv,
        &name,
        json!({"address": BROKER, "service": "mqtt.on_message",
               "topics": [{"filter": topic, "qos": 0}]}),
    )
    .await;
    wait_subscribed(&srv, &name).await;
    let mut pubc = TestClient::connect("qos0").await;
    const N: u64 = 100;
    for i in 0..N {
        pubc.publish(
            &topic,
            format!("hold:q{i}").as_bytes(),
            QoS::AtMostOnce,
            false,
        )
        .await;
    }
    // Every message is accounted for: running (held), dropped, or failed by the pool.
    let st = eventually(WAIT, "every QoS 0 message taken or dropped", || async {
        let s = status(&srv, &name).await;
        let n = ["in_flight", "dropped", "failed", "acked"]
            .iter()
            .map(|k| s[*k].as_u64().unwrap())
            .sum::<u64>();
        (n == N).then_some(s)
    })
    .await;
    // The channel's bound (inbound::mqtt::QOS0_IN_FLIGHT).
    assert!(st["in_flight"].as_u64().unwrap() <= 32, "{st}");
    assert!(st["dropped"].as_u64().unwrap() >= N - 32, "{st}");
    release(&name);
    let st = eventually(WAIT, "the held calls ended", || async {
        let s = status(&srv, &name).await;
        (s["in_flight"] == 0).then_some(s)
    })
    .await;
    assert_eq!(
        seen(&name).len() as u64,
        st["acked"].as_u64().unwrap(),
        "{st}"
    );
    let m = admin(&srv, "GET", "/metrics", Value::Null).await;
    let m = text(&m);
    let line = format!(
        "oxbus_inbound_messages_total{{type=\"mqtt\",channel=\"{name}\",outcome=\"dropped\"}} {}",
        st["dropped"]
    );
    assert!(m.contains(&line), "{line} not in\n{m}");
    pubc.close().await;
    admin(
        &srv,
        "DELETE",
        &format!("/v1/inbound/mqtt/{name}"),
        Value::Null,
    )
    .await;
    clean_seen(&name);
    srv.assert_no_errors(&["QoS 0 message(s) dropped"]);
}

#[tokio::test]
async fn a_cut_connection_reconnects_and_the_session_resumes() {
    use oxbus_integration::relay::Relay;
    let srv = env().start().await;
    let relay = Relay::start("127.0.0.1:1883").await;
    let name = unique("cut");
    let topic = format!("oxbus-test/{name}/in");
    clean_seen(&name);
    put_channel(
        &srv,
        &name,
        json!({"address": format!("mqtt://{}", relay.host_port()),
               "service": "mqtt.on_message", "topics": [{"filter": topic, "qos": 1}]}),
    )
    .await;
    wait_subscribed(&srv, &name).await;
    let mut pubc = TestClient::connect("cut").await;
    until_processed(&mut pubc, &name, &topic, "before").await;

    relay.cut().await;
    eventually(WAIT, "the channel sees the cut", || async {
        let s = status(&srv, &name).await;
        (s["connected"] == false).then_some(())
    })
    .await;
    // Published while cut: the broker keeps them for the session.
    for i in 0..5 {
        pubc.publish(
            &topic,
            format!("while-cut-{i}").as_bytes(),
            QoS::AtLeastOnce,
            false,
        )
        .await;
    }
    let accepted = relay.accepted();
    relay.restore().await;
    eventually(WAIT, "everything published while cut", || async {
        let c = processed_counts(&name);
        (0..5)
            .all(|i| c.contains_key(&format!("while-cut-{i}")))
            .then_some(())
    })
    .await;
    assert!(relay.accepted() > accepted);
    let st = status(&srv, &name).await;
    assert_eq!(st["connected"], true, "{st}");
    assert!(
        st["last_error"].as_str().unwrap_or("").contains(&name),
        "the error names the channel: {st}"
    );
    pubc.close().await;
    admin(
        &srv,
        "DELETE",
        &format!("/v1/inbound/mqtt/{name}"),
        Value::Null,
    )
    .await;
    clean_seen(&name);
    srv.assert_no_errors(&[&name]);
}

/// A broker that answers CONNECT with a CONNACK, then, once a packet came after it, either
/// says nothing more (`close: false`) or closes the connection (`close: true`).
async fn fake_broker(close: bool) -> (u16, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let mut buf = [0u8; 4096];
            if s.read(&mut buf).await.unwrap_or(0) == 0 {
                continue;
            }
            s.write_all(&[0x20, 0x02, 0x00, 0x00]).await.unwrap();
            if close {
                let _ = s.read(&mut buf).await;
                drop(s);
            } else {
                held.push(s);
            }
        }
    });
    (port, task)
}

#[tokio::test]
async fn outgoing_timeout_against_a_silent_broker_and_io_when_it_breaks_mid_publish() {
    let srv = env().start().await;
    let (silent, silent_task) = fake_broker(false).await;
    let (breaking, breaking_task) = fake_broker(true).await;
    let quiet = unique("quiet");
    put_conn(
        &srv,
        &quiet,
        json!({"address": format!("mqtt://127.0.0.1:{silent}"), "timeout_ms": 500}),
    )
    .await;
    let r = publish_via(
        &srv,
        "/publish",
        json!({"conn": quiet, "topic": "oxbus-test/quiet", "payload": "x", "qos": 1}),
    )
    .await;
    let m = failed_with(&r, "OutgoingTimeout");
    assert_eq!(r["errno"], "timeout", "{r}");
    assert!(m.contains(&format!("MQTT connection {quiet}")), "{m}");

    let broken = unique("broken");
    put_conn(
        &srv,
        &broken,
        json!({"address": format!("mqtt://127.0.0.1:{breaking}"), "timeout_ms": 10000}),
    )
    .await;
    let r = publish_via(
        &srv,
        "/publish",
        json!({"conn": broken, "topic": "oxbus-test/broken", "payload": "x", "qos": 1}),
    )
    .await;
    let m = failed_with(&r, "OutgoingConnectionError");
    assert_eq!(r["errno"], "io", "{r}");
    assert!(m.contains(&format!("MQTT connection {broken}")), "{m}");
    for n in [&quiet, &broken] {
        admin(
            &srv,
            "DELETE",
            &format!("/v1/outgoing/mqtt/{n}"),
            Value::Null,
        )
        .await;
    }
    silent_task.abort();
    breaking_task.abort();
    srv.assert_no_errors(&[&quiet, &broken]);
}

#[tokio::test]
async fn the_cli_manages_mqtt_channels() {
    let srv = env().start().await;
    let name = unique("cli");
    let dir = std::env::temp_dir().join(format!("oxbus-it-mqtt-cli-{}", next_id()));
    std::fs::create_dir_all(&dir).unwrap();
    let def = dir.join("def.json");
    std::fs::write(
        &def,
        json!({"address": BROKER, "service": "mqtt.on_message",
               "topics": [{"filter": format!("oxbus-test/{name}"), "qos": 1}]})
        .to_string(),
    )
    .unwrap();
    let ok = oxbus_integration::api::ok;
    let out = ok(&srv.cli(&["inbound", "put", "mqtt", &name, def.to_str().unwrap()]));
    assert!(
        out.contains(&format!("mqtt channel {name} created")),
        "{out}"
    );
    wait_subscribed(&srv, &name).await;
    let out = ok(&srv.cli(&["inbound", "list", "mqtt"]));
    assert!(
        out.contains(&name) && out.contains("connected, 0 acked"),
        "{out}"
    );
    let out = ok(&srv.cli(&["inbound", "stats", "mqtt", &name]));
    assert!(out.contains("SUBSCRIBED") && out.contains(&name), "{out}");
    let out = ok(&srv.cli(&["inbound", "delete", "mqtt", &name]));
    assert!(
        out.contains(&format!("mqtt channel {name} deleted")),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    let r = admin(
        &srv,
        "GET",
        &format!("/v1/inbound/mqtt/{name}"),
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 404);
    srv.assert_no_errors(&[]);
}

#[tokio::test]
async fn two_channels_cannot_share_a_client_id() {
    let srv = env().start().await;
    let (a, b) = (unique("ida"), unique("idb"));
    let id = unique("shared-id");
    let def = |n: &str| {
        json!({"address": BROKER, "service": "mqtt.on_message", "client_id": id,
               "is_active": false, "topics": [{"filter": format!("oxbus-test/{n}")}]})
    };
    put_channel(&srv, &a, def(&a)).await;
    let r = admin(&srv, "PUT", &format!("/v1/inbound/mqtt/{b}"), def(&b)).await;
    assert_eq!(r.status, 409, "{}", text(&r));
    assert!(
        text(&r).contains(&a) && text(&r).contains(&id),
        "{}",
        text(&r)
    );
    // Its own client id again is no conflict.
    put_channel(&srv, &a, def(&a)).await;
    admin(
        &srv,
        "DELETE",
        &format!("/v1/inbound/mqtt/{a}"),
        Value::Null,
    )
    .await;
    put_channel(&srv, &b, def(&b)).await;
    admin(
        &srv,
        "DELETE",
        &format!("/v1/inbound/mqtt/{b}"),
        Value::Null,
    )
    .await;
    srv.assert_no_errors(&[]);
}
