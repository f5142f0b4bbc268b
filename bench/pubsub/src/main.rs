//! The pub/sub benchmark's client (bench/pubsub.sh runs it): one publisher and one
//! subscriber, end to end, against RabbitMQ (lapin, publisher confirms) or Oxbus (its REST
//! API, or a service that publishes), printing one JSON line of results.
//!
//! ```text
//! oxbus-pubsub-bench rabbit kind=quorum|classic|transient n=100000 [size=1024]
//!     [window=1000] [prefetch=1000] [rate=0] [consume=1] [amqp=amqp://...]
//! oxbus-pubsub-bench oxbus port=P topic=/bench/t sub_key=sk n=100000 [size=1024]
//!     [batch=250] [conns=4] [rate=0] [gd=1] [auth="Basic ..."] [service_path=/p]
//!     [consume=1] [pull_max=1000]
//! ```
//!
//! Every message carries its send time (Unix ns, 20 digits) in its first bytes, so the
//! subscriber measures publish-to-delivery latency; the publisher measures publish-to-ack
//! (publisher confirm, or the REST answer). `rate=0`: as fast as the window allows
//! (throughput); `rate=R`: R messages per second, each published alone (latency).

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

type Res<T> = Result<T, String>;

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A message of `size` bytes (at least 20) whose first 20 are its send time.
fn payload(size: usize) -> Vec<u8> {
    let mut v = format!("{:020}", now_ns()).into_bytes();
    v.resize(size.max(20), b'x');
    v
}

/// The send time a payload carries.
fn sent_at(data: &[u8]) -> Option<u64> {
    std::str::from_utf8(data.get(..20)?).ok()?.parse().ok()
}

/// Latencies in ns, with percentiles in ms.
#[derive(Default)]
struct Lat(Vec<u64>);

impl Lat {
    fn pct(&mut self, p: f64) -> Option<f64> {
        if self.0.is_empty() {
            return None;
        }
        self.0.sort_unstable();
        let i = ((self.0.len() as f64 * p).ceil() as usize).clamp(1, self.0.len()) - 1;
        Some(self.0[i] as f64 / 1e6)
    }
}

struct Args(HashMap<String, String>);

impl Args {
    fn parse() -> (String, Args) {
        let mut it = std::env::args().skip(1);
        let mode = it.next().unwrap_or_default();
        let map = it
            .map(|a| match a.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => panic!("argument {a:?} is not key=value"),
            })
            .collect();
        (mode, Args(map))
    }
    fn s(&self, k: &str, d: &str) -> String {
        self.0.get(k).cloned().unwrap_or_else(|| d.to_owned())
    }
    fn n(&self, k: &str, d: u64) -> u64 {
        self.0.get(k).map_or(d, |v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{k}={v} is not a number"))
        })
    }
}

/// What the subscriber side collects.
#[derive(Default)]
struct Sub {
    received: u64,
    delivery: Lat,
    last: Option<Instant>,
}

/// Publish-side figures.
#[derive(Default)]
struct Pubd {
    acked: AtomicU64,
    failed: AtomicU64,
    ack: Mutex<Lat>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (mode, args) = Args::parse();
    let out = match mode.as_str() {
        "rabbit" => rabbit(&args).await,
        "oxbus" => oxbus(&args).await,
        _ => Err(format!(
            "usage: {} rabbit|oxbus key=value...",
            env!("CARGO_PKG_NAME")
        )),
    };
    match out {
        Ok(v) => println!("{v}"),
        Err(e) => {
            eprintln!("oxbus-pubsub-bench {mode}: {e}");
            std::process::exit(1);
        }
    }
}

/// Schedules message `i` of a steady `rate` (none: now).
async fn pace(start: Instant, rate: u64, i: u64) {
    if let Some(ns) = (i * 1_000_000_000).checked_div(rate) {
        tokio::time::sleep_until((start + Duration::from_nanos(ns)).into()).await;
    }
}

/// One run's figures: from `start` to the last delivery (or, with no subscriber, to when
/// the last publish was acknowledged, `published_at`).
struct Span {
    start: Instant,
    published_at: Instant,
}

fn result(
    (system, variant): (&str, &str),
    n: u64,
    Span {
        start,
        published_at,
    }: Span,
    sub: &mut Sub,
    pubd: &Pubd,
    extra: Value,
) -> Value {
    let end = sub.last.unwrap_or(published_at);
    let secs = end.duration_since(start).as_secs_f64();
    let pub_secs = published_at.duration_since(start).as_secs_f64();
    let mut ack = pubd.ack.lock().unwrap();
    let mut v = json!({
        "system": system,
        "variant": variant,
        "n": n,
        "published": pubd.acked.load(Ordering::SeqCst),
        "publish_failed": pubd.failed.load(Ordering::SeqCst),
        "received": sub.received,
        "secs": secs,
        "msgs_per_s": if sub.received > 0 { sub.received as f64 / secs } else { 0.0 },
        "publish_per_s": pubd.acked.load(Ordering::SeqCst) as f64 / pub_secs,
        "ack_p50_ms": ack.pct(0.50),
        "ack_p99_ms": ack.pct(0.99),
        "delivery_p50_ms": sub.delivery.pct(0.50),
        "delivery_p99_ms": sub.delivery.pct(0.99),
        // This client's own CPU seconds: near `secs` x its 2 threads means the client, not
        // the system measured, was the bottleneck.
        "client_cpu_s": own_cpu_s(),
    });
    if let (Value::Object(m), Value::Object(x)) = (&mut v, extra) {
        m.extend(x);
    }
    v
}

/// This process's user + system CPU time, seconds (/proc/self/stat).
fn own_cpu_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let f: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// The bytes of the files under `dir` (a data directory's size).
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

// ---------------------------------------------------------------------------- RabbitMQ

async fn rabbit(a: &Args) -> Res<Value> {
    use lapin::options::*;
    use lapin::types::{AMQPValue, FieldTable};
    use lapin::{BasicProperties, Connection, ConnectionProperties};

    let kind = a.s("kind", "quorum");
    let n = a.n("n", 100_000);
    let size = a.n("size", 1024) as usize;
    let window = a.n("window", 1000) as usize;
    let prefetch = a.n("prefetch", 1000) as u16;
    let rate = a.n("rate", 0);
    let consume = a.n("consume", 1) == 1;
    let uri = a.s("amqp", "amqp://guest:guest@127.0.0.1:5672/%2f");
    let queue = a.s(
        "queue",
        &format!("oxbus-bench-{kind}-{}-{}", std::process::id(), now_ns()),
    );
    let e = |what: &'static str| move |err: lapin::Error| format!("{what}: {err}");

    let pconn = Connection::connect(&uri, ConnectionProperties::default())
        .await
        .map_err(e("connect"))?;
    let cconn = Connection::connect(&uri, ConnectionProperties::default())
        .await
        .map_err(e("connect"))?;
    let pch = pconn.create_channel().await.map_err(e("channel"))?;
    let cch = cconn.create_channel().await.map_err(e("channel"))?;
    let (opts, mut qargs, persistent) = match kind.as_str() {
        "quorum" => (QueueDeclareOptions::durable(), FieldTable::default(), true),
        "classic" => (QueueDeclareOptions::durable(), FieldTable::default(), true),
        "transient" => (QueueDeclareOptions::default(), FieldTable::default(), false),
        k => return Err(format!("kind={k}: quorum, classic or transient")),
    };
    if kind == "quorum" {
        qargs.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
    } else {
        qargs.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("classic".into()),
        );
    }
    pch.queue_declare(queue.as_str().into(), opts, qargs)
        .await
        .map_err(e("queue.declare"))?;
    pch.confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(e("confirm.select"))?;

    let sub = Arc::new(Mutex::new(Sub::default()));
    let consumer = if consume {
        cch.basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(e("basic.qos"))?;
        let mut stream = cch
            .basic_consume(
                queue.as_str().into(),
                "bench".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(e("basic.consume"))?;
        let sub = sub.clone();
        Some(tokio::spawn(async move {
            let mut unacked = 0u32;
            while let Some(d) = stream.next().await {
                let d = d.map_err(|err| format!("consume: {err}"))?;
                let t = now_ns();
                let done = {
                    let mut s = sub.lock().unwrap();
                    s.received += 1;
                    if let Some(at) = sent_at(&d.data) {
                        s.delivery.0.push(t.saturating_sub(at));
                    }
                    s.last = Some(Instant::now());
                    s.received >= n
                };
                unacked += 1;
                // Acks of up to 64 deliveries at once (multiple), as a fast consumer does.
                if unacked >= 64 || done {
                    d.acker
                        .ack(BasicAckOptions { multiple: true })
                        .await
                        .map_err(|err| format!("ack: {err}"))?;
                    unacked = 0;
                }
                if done {
                    break;
                }
            }
            Ok::<(), String>(())
        }))
    } else {
        None
    };

    // With consume=0 and data_dir=DIR: how much the broker's data directory grew while the
    // messages were published (they stay in the queue until it is deleted).
    let data_dir = a.0.get("data_dir").map(std::path::PathBuf::from);
    let dir_before = data_dir.as_deref().map(dir_bytes);
    let pubd = Arc::new(Pubd::default());
    let props = BasicProperties::default().with_delivery_mode(if persistent { 2 } else { 1 });
    // The confirms awaited in this task (no task per message: the client's CPU per message
    // stays well below the broker's), at most `window` unconfirmed.
    let mut pending = futures_util::stream::FuturesUnordered::new();
    let settle = |(ok, sent): (bool, Instant)| {
        if ok {
            pubd.acked.fetch_add(1, Ordering::Relaxed);
            let ns = sent.elapsed().as_nanos() as u64;
            pubd.ack.lock().unwrap().0.push(ns);
        } else {
            pubd.failed.fetch_add(1, Ordering::Relaxed);
        }
    };
    let start = Instant::now();
    for i in 0..n {
        pace(start, rate, i).await;
        while pending.len() >= window {
            if let Some(r) = pending.next().await {
                settle(r);
            }
        }
        let sent = Instant::now();
        let confirm = pch
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                &payload(size),
                props.clone(),
            )
            .await
            .map_err(e("basic.publish"))?;
        pending.push(async move { (matches!(confirm.await, Ok(c) if c.is_ack()), sent) });
        while let Some(Some(r)) = futures_util::FutureExt::now_or_never(pending.next()) {
            settle(r);
        }
    }
    while let Some(r) = pending.next().await {
        settle(r);
    }
    let published_at = Instant::now();
    let dir_growth = match (&data_dir, dir_before) {
        (Some(d), Some(before)) => Some(dir_bytes(d) as i64 - before as i64),
        _ => None,
    };
    if let Some(c) = consumer {
        tokio::time::timeout(Duration::from_secs(300), c)
            .await
            .map_err(|_| "the consumer did not get every message in 300 s".to_string())?
            .map_err(|err| format!("consumer task: {err}"))??;
    }
    // The queue's messages at rest (consume=0) are what the script measures on disk; it
    // deletes the queue itself then (queue=NAME keep=1).
    if a.n("keep", 0) == 0 {
        pch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .map_err(e("queue.delete"))?;
    }
    let _ = pconn.close(200, "bench done".into()).await;
    let _ = cconn.close(200, "bench done".into()).await;
    let mut s = sub.lock().unwrap();
    Ok(result(
        ("rabbitmq", &kind),
        n,
        Span {
            start,
            published_at,
        },
        &mut s,
        &pubd,
        json!({"queue": queue, "window": window, "prefetch": prefetch, "rate": rate,
               "data_dir_growth_bytes": dir_growth}),
    ))
}

// ---------------------------------------------------------------------------- Oxbus

/// A keep-alive HTTP/1.1 connection.
struct Http {
    tx: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    port: u16,
    auth: Option<String>,
}

impl Http {
    async fn connect(port: u16, auth: Option<String>) -> Res<Http> {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("connect 127.0.0.1:{port}: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let (tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Ok(Http { tx, port, auth })
    }

    async fn post(&mut self, path: &str, body: Vec<u8>) -> Res<(u16, Bytes)> {
        self.tx.ready().await.map_err(|e| e.to_string())?;
        let mut b = hyper::Request::post(path)
            .header("host", format!("127.0.0.1:{}", self.port))
            .header("content-type", "application/json");
        if let Some(a) = &self.auth {
            b = b.header("authorization", a);
        }
        let req = b
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let resp = self
            .tx
            .send_request(req)
            .await
            .map_err(|e| format!("POST {path}: {e}"))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    }
}

/// A message of the REST publish: the payload as text (it is ASCII).
fn rest_msg(size: usize, gd: bool) -> Value {
    let text = String::from_utf8(payload(size)).expect("ASCII");
    if gd {
        json!({ "data": text })
    } else {
        json!({ "data": text, "has_gd": false })
    }
}

async fn oxbus(a: &Args) -> Res<Value> {
    let port = a.n("port", 0) as u16;
    let topic = a.s("topic", "/bench/t");
    let sub_key = a.s("sub_key", "");
    let n = a.n("n", 100_000);
    let size = a.n("size", 1024) as usize;
    let batch = a.n("batch", 250).max(1);
    let conns = a.n("conns", 4).max(1);
    let rate = a.n("rate", 0);
    let gd = a.n("gd", 1) == 1;
    let consume = a.n("consume", 1) == 1;
    let pull_max = a.n("pull_max", 1000);
    let auth = a.0.get("auth").cloned();
    let service_path = a.0.get("service_path").cloned();
    // How the service publishes: `loop` (one `self.pubsub.publish` per message) or `list`
    // (one call with `data_list`).
    let service_mode = a.s("service_mode", "loop");
    if port == 0 || (consume && sub_key.is_empty()) {
        return Err("port= and sub_key= are needed".into());
    }

    let sub = Arc::new(Mutex::new(Sub::default()));
    let puller = if consume {
        let mut http = Http::connect(port, auth.clone()).await?;
        let sub = sub.clone();
        let sub_key = sub_key.clone();
        Some(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(300);
            loop {
                if sub.lock().unwrap().received >= n {
                    return Ok(());
                }
                if Instant::now() > deadline {
                    return Err("the subscriber did not get every message in 300 s".into());
                }
                let req = json!({"sub_key": sub_key, "max_messages": pull_max, "wait_ms": 1000});
                let (status, body) = http
                    .post("/pubsub/messages/get", req.to_string().into_bytes())
                    .await?;
                let t = now_ns();
                if status != 200 {
                    return Err(format!("pull: {status} {}", String::from_utf8_lossy(&body)));
                }
                let v: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
                let msgs = v["messages"].as_array().cloned().unwrap_or_default();
                if msgs.is_empty() {
                    continue;
                }
                let mut ids = Vec::with_capacity(msgs.len());
                {
                    let mut s = sub.lock().unwrap();
                    for m in &msgs {
                        s.received += 1;
                        if let Some(at) = m["data"].as_str().and_then(|d| sent_at(d.as_bytes())) {
                            s.delivery.0.push(t.saturating_sub(at));
                        }
                        ids.push(m["msg_id"].clone());
                    }
                    s.last = Some(Instant::now());
                }
                let ack = json!({"sub_key": sub_key, "msg_ids": ids});
                let (status, body) = http
                    .post("/pubsub/messages/ack", ack.to_string().into_bytes())
                    .await?;
                if status != 200 {
                    return Err(format!("ack: {status} {}", String::from_utf8_lossy(&body)));
                }
            }
        }))
    } else {
        None
    };

    let pubd = Arc::new(Pubd::default());
    // The publishers: `conns` connections taking the next batch (throughput) or the next
    // single message of the steady rate (latency) from one counter.
    let next = Arc::new(AtomicU64::new(0));
    let per = if rate > 0 { 1 } else { batch };
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let mut http = Http::connect(port, auth.clone()).await?;
        let (next, pubd, topic, service_path, service_mode) = (
            next.clone(),
            pubd.clone(),
            topic.clone(),
            service_path.clone(),
            service_mode.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(per, Ordering::SeqCst);
                if i >= n {
                    return Ok::<(), String>(());
                }
                let k = per.min(n - i);
                pace(start, rate, i).await;
                let sent = Instant::now();
                let (path, body) = match &service_path {
                    // The service publishes `k` messages of `size` bytes itself
                    // (`self.pubsub.publish(data_list=...)`), stamped when it makes them.
                    Some(p) => (
                        p.clone(),
                        json!({"topic": topic, "n": k, "size": size, "gd": gd, "mode": service_mode}),
                    ),
                    None => (
                        format!("/pubsub/topic{topic}"),
                        json!({"messages": (0..k).map(|_| rest_msg(size, gd)).collect::<Vec<_>>()}),
                    ),
                };
                let (status, resp) = http.post(&path, body.to_string().into_bytes()).await?;
                if status == 200 {
                    pubd.acked.fetch_add(k, Ordering::Relaxed);
                    let ns = sent.elapsed().as_nanos() as u64;
                    pubd.ack.lock().unwrap().0.push(ns);
                } else {
                    pubd.failed.fetch_add(k, Ordering::Relaxed);
                    return Err(format!(
                        "publish: {status} {}",
                        String::from_utf8_lossy(&resp)
                    ));
                }
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| format!("publisher task: {e}"))??;
    }
    let published_at = Instant::now();
    if let Some(p) = puller {
        p.await.map_err(|e| format!("subscriber task: {e}"))??;
    }
    let mut s = sub.lock().unwrap();
    let gd_name = if gd { "gd" } else { "non-gd" };
    let variant = match &service_path {
        Some(_) => format!("service-{gd_name}-{service_mode}"),
        None => format!("rest-{gd_name}"),
    };
    Ok(result(
        ("oxbus", &variant),
        n,
        Span {
            start,
            published_at,
        },
        &mut s,
        &pubd,
        json!({"topic": topic, "batch": per, "conns": conns, "rate": rate}),
    ))
}
