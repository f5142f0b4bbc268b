//! The README's first command, end to end: `oxbus quickstart DIR --port P` creates an
//! environment, seeds its store with the sample module and channels, and serves them; run
//! again on the same directory it reuses everything.

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use oxbus_integration::*;
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A port P with P+1..=P+4 free too (quickstart puts the admin API on P+1, its proxy on
/// P+2, the proxy's stats on P+3 and the dashboard on P+4).
fn free_port_run() -> u16 {
    for _ in 0..200 {
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = a.local_addr().unwrap().port();
        if p < u16::MAX - 4
            && (1..=4).all(|k| std::net::TcpListener::bind(("127.0.0.1", p + k)).is_ok())
        {
            return p;
        }
    }
    panic!("no run of five free ports");
}

/// Signs in to the dashboard on `port` as a browser would (the form's token and its
/// cookie, then the password): the answer's status and its session cookie.
async fn dashboard_sign_in(port: u16, user: &str, password: &str) -> (u16, Option<String>) {
    let mut c = Client::connect(port).await.unwrap();
    let form = c
        .request("GET", "/signin", &[], bytes::Bytes::new())
        .await
        .unwrap();
    assert_eq!(form.status, 200);
    let page = String::from_utf8_lossy(&form.body).into_owned();
    let pre = page
        .split("name=\"pre\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("the form's token")
        .to_owned();
    let cookie = format!("oxdash_pre={pre}");
    let body = format!("pre={pre}&next=%2F&user={user}&password={password}");
    let mut c = Client::connect(port).await.unwrap();
    let r = c
        .request(
            "POST",
            "/signin",
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("cookie", cookie.as_str()),
            ],
            bytes::Bytes::from(body),
        )
        .await
        .unwrap();
    let session = r
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("oxdash_session="))
        .map(|v| v.split(';').next().unwrap().to_owned());
    (r.status, session)
}

/// Runs quickstart as the README does: from the parent directory, the environment named
/// by a relative path.
fn quickstart(dir: &std::path::Path, port: u16) -> Child {
    Command::new(oxbus_bin())
        .current_dir(dir.parent().unwrap())
        .args([
            "quickstart",
            dir.file_name().unwrap().to_str().unwrap(),
            "--port",
        ])
        .arg(port.to_string())
        .args(["--workers", "2"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn call(port: u16, method: &str, path: &str, body: &[u8]) -> Option<Resp> {
    let mut c = Client::connect(port).await.ok()?;
    let headers = [("content-type", "application/json")];
    c.request(method, path, &headers, bytes::Bytes::copy_from_slice(body))
        .await
        .ok()
}

async fn ready(port: u16) {
    eventually(Duration::from_secs(60), "quickstart ready", || async move {
        call(port, "GET", "/readyz", b"")
            .await
            .filter(|r| r.status == 200)
    })
    .await;
}

fn stop(mut child: Child) {
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(0));
}

/// A client command against the environment `dir` (`--env`). OXBUS_URL and OXBUS_TOKEN
/// naming another server are set too: `--env` is taken and they are not (nor refused).
fn cli(dir: &std::path::Path, args: &[&str]) -> Value {
    let out = Command::new(oxbus_bin())
        .args(args)
        .args(["--env", dir.to_str().unwrap(), "--output", "json"])
        .env("OXBUS_URL", "http://127.0.0.1:1")
        .env("OXBUS_TOKEN", "not-this-environments-token")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn quickstart_creates_seeds_serves_and_reuses_its_environment() {
    let base = std::env::temp_dir().join(format!("oxbus-it-qs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    let dir = base.join("env");
    let port = free_port_run();
    let child = quickstart(&dir, port);
    ready(port).await;

    let r = call(port, "POST", "/echo", br#"{"hello": "world"}"#)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"hello": "world", "ok": true}));
    let r = call(port, "GET", "/hello/Ann?greeting=Hi", b"")
        .await
        .unwrap();
    assert_eq!(r.json()["message"], "Hi, Ann!");
    assert_eq!(
        call(port, "GET", "/customers/1", b"").await.unwrap().status,
        200
    );
    assert_eq!(
        call(port, "GET", "/customers/9", b"").await.unwrap().status,
        404
    );
    assert_eq!(call(port, "GET", "/slow", b"").await.unwrap().status, 200);
    // The cache: a counter kept by the server across requests (and workers).
    for n in 1..=3 {
        let r = call(port, "GET", "/visits/home", b"").await.unwrap();
        assert_eq!(r.json(), json!({"page": "home", "visits": n}));
    }

    // The sample outgoing connections: demo.self (REST, to this server's own /hello/{name})
    // and demo.sqlite (a file in the environment), pooled in the server.
    for n in 1..=2 {
        let r = call(port, "GET", "/sample/outgoing", b"").await.unwrap();
        assert_eq!(r.status, 200, "{:?}", r.body);
        let doc = r.json();
        assert_eq!(doc["rest"]["status"], 200, "{doc}");
        assert_eq!(doc["rest"]["data"]["message"], "Hi, outgoing!", "{doc}");
        assert_eq!(doc["sql"]["calls"], n, "{doc}");
    }
    assert!(dir.join("demo.db").is_file());

    // The sample Redis connection demo.redis: a counter in the machine's Redis
    // (127.0.0.1:6379, which .ci/run starts), through the server's pool. The key is the
    // sample's own; the test deletes it afterwards.
    let mut last = 0;
    for _ in 0..2 {
        let r = call(port, "GET", "/sample/redis", b"").await.unwrap();
        assert_eq!(r.status, 200, "{:?}", r.body);
        let calls = r.json()["redis"]["calls"].as_i64().unwrap();
        assert!(calls > last, "the counter moves on: {calls} after {last}");
        last = calls;
    }
    redis_del("oxbus:quickstart:calls").await;

    // The sample WebSocket channel /sample/chat: a message from one client reaches both.
    {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let url = format!("ws://127.0.0.1:{port}/sample/chat");
        let connect = async || {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            tokio_tungstenite::client_async(url.as_str(), tcp)
                .await
                .unwrap()
                .0
        };
        let text = async |ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>| {
            loop {
                let m = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
                    .await
                    .expect("a message")
                    .unwrap()
                    .unwrap();
                if let Message::Text(t) = m {
                    return serde_json::from_str::<serde_json::Value>(&t).unwrap();
                }
            }
        };
        // A sender gets its own copy and the count, in either order.
        let sent = async |ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
                          msg: &str| {
            ws.send(Message::text(msg.to_owned())).await.unwrap();
            let mut seen = [text(ws).await, text(ws).await];
            seen.sort_by_key(|v| v.to_string());
            (seen[1].clone(), seen[0].clone())
        };
        // Each client's own round trip proves it registered before the next step.
        let mut a = connect().await;
        let (count, copy) = sent(&mut a, "{\"n\": 1}").await;
        assert_eq!(count, serde_json::json!({"sent_to": 1}), "{copy}");
        let mut b = connect().await;
        let (count, copy) = sent(&mut b, "{\"n\": 2}").await;
        assert_eq!(count, serde_json::json!({"sent_to": 2}), "{copy}");
        assert_eq!(copy["message"], serde_json::json!({"n": 2}));
        assert_eq!(text(&mut a).await["message"], serde_json::json!({"n": 2}));
        // A message from one client reaches the other.
        let (count, _) = sent(&mut a, "{\"hi\": 1}").await;
        assert_eq!(count, serde_json::json!({"sent_to": 2}));
        let got = text(&mut b).await;
        assert_eq!(got["message"], serde_json::json!({"hi": 1}), "{got}");
        assert!(got["from"].as_str().unwrap().starts_with("ws."), "{got}");
    }

    // The sample file channel: a file put in files/in reaches the sample service, whose count
    // GET /sample/files shows, and then moves to processed/.
    let files_in = dir.join("files/in");
    std::fs::write(files_in.join("hello.txt"), "hello\nfiles\n").unwrap();
    let got = eventually(
        std::time::Duration::from_secs(30),
        "the sample file handled",
        || async {
            let r = call(port, "GET", "/sample/files", b"").await?;
            let d = r.json();
            (d["received"] == 1 && files_in.join("processed/hello.txt").exists()).then_some(d)
        },
    )
    .await;
    assert_eq!(got["last"]["file_name"], "hello.txt", "{got}");
    assert_eq!(got["last"]["lines"], 2, "{got}");
    assert!(!files_in.join("hello.txt").exists());

    // The sample pub/sub: a publish to /demo/orders through the REST API at /pubsub reaches
    // the subscribed sample service, whose count GET /demo/orders shows.
    // Its callers give the sample's basic-auth password, which quickstart wrote next to the
    // admin token; without it, 401.
    let password = std::fs::read_to_string(dir.join("pubsub.password")).unwrap();
    let auth = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("demo:{}", password.trim())
        )
    );
    let publish = |auth: Option<String>| async move {
        let mut c = Client::connect(port).await.unwrap();
        let mut headers = vec![("content-type", "application/json")];
        if let Some(a) = &auth {
            headers.push(("authorization", a.as_str()));
        }
        c.request(
            "POST",
            "/pubsub/topic/demo/orders",
            &headers,
            bytes::Bytes::from_static(br#"{"data": "hi"}"#),
        )
        .await
        .unwrap()
    };
    assert_eq!(publish(None).await.status, 401);
    let r = publish(Some(auth)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let msg_id = r.json()["msg_id"].as_str().unwrap().to_owned();
    let got = eventually(Duration::from_secs(20), "the order delivered", || async {
        let doc = call(port, "GET", "/demo/orders", b"").await?.json();
        (doc["received"] == 1).then_some(doc)
    })
    .await;
    assert_eq!(got["last"]["msg_id"], msg_id.as_str(), "{got}");
    assert_eq!(got["last"]["data"], "hi", "{got}");

    // The proxy in front of it (port + 2) serves the same, and reports the server up.
    ready(port + 2).await;
    let r = call(port + 2, "POST", "/echo", br#"{"via": "proxy"}"#)
        .await
        .unwrap();
    assert_eq!(r.json(), json!({"via": "proxy", "ok": true}));
    assert!(r.header("x-request-id").is_some());
    let stats = call(port + 3, "GET", "/stats", b"").await.unwrap().json();
    assert_eq!(stats["upstreams"][0]["up"], true, "{stats}");
    assert!(dir.join("proxy.toml").exists());

    // The dashboard beside it (port + 4): its first user, made through the admin API once
    // the server answered, signs in with the password quickstart printed and kept.
    let password = eventually(
        Duration::from_secs(60),
        "the dashboard's first user",
        || async {
            std::fs::read_to_string(dir.join("dashboard-admin.password"))
                .ok()
                .map(|p| p.trim().to_owned())
                .filter(|p| !p.is_empty())
        },
    )
    .await;
    let (status, session) = dashboard_sign_in(port + 4, "admin", &password).await;
    assert_eq!(status, 303, "signed in");
    let session = session.expect("a session cookie");
    let mut c = Client::connect(port + 4).await.unwrap();
    let page = c
        .request(
            "GET",
            "/services",
            &[("cookie", session.as_str())],
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(page.status, 200);
    assert!(String::from_utf8_lossy(&page.body).contains("demo.echo"));
    let (status, _) = dashboard_sign_in(port + 4, "admin", "not-the-password").await;
    assert_eq!(status, 401);

    // The sample module is a deployed module (version 1) and the channels are in the store.
    let services = cli(&dir, &["services"]);
    let echo = services["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "demo.echo")
        .unwrap()
        .clone();
    assert_eq!(echo["origin"], "deployed");
    assert_eq!(echo["version"], 1);
    let text = std::fs::read_to_string(dir.join("server.toml")).unwrap();
    assert!(!text.contains("[[channels]]"), "{text}");
    // Its Prometheus metrics on the admin listener, with the calls above in them.
    let page = call(port + 1, "GET", "/metrics", b"").await.unwrap();
    assert_eq!(page.status, 200);
    let page = String::from_utf8(page.body.to_vec()).unwrap();
    oxbus_integration::prom::check(&page);
    let page = oxbus_integration::prom::Page::new(page);
    assert!(
        page.get_or_zero("oxbus_service_calls_total", &[("service", "demo.echo")]) >= 1.0,
        "demo.echo's calls are counted"
    );
    stop(child);

    // Again on the same directory: reused, nothing seeded twice.
    let child = quickstart(&dir, port);
    ready(port).await;
    let r = call(port, "POST", "/echo", b"{}").await.unwrap();
    assert_eq!(r.status, 200);
    ready(port + 2).await;
    let modules = cli(&dir, &["config", "export"]);
    assert_eq!(modules["config_version"], 4);
    // The REST channels, the pubsub one and the WebSocket one (listed with them).
    let channels = modules["channel_rest"].as_array().unwrap();
    assert_eq!(channels.len(), 11);
    assert_eq!(modules["channel_file"][0]["name"], "sample.files");
    assert!(
        channels
            .iter()
            .any(|c| c["type"] == "websocket" && c["name"] == "sample.chat"),
        "{channels:?}"
    );
    assert_eq!(modules["outgoing_redis"][0]["name"], "demo.redis");
    assert_eq!(modules["pubsub_topic"][0]["name"], "/demo/orders");
    assert_eq!(modules["pubsub_subscription"][0]["sub_key"], "demo.orders");
    // The SQLite file kept its rows across the restart.
    let r = call(port, "GET", "/sample/outgoing", b"").await.unwrap();
    assert_eq!(r.json()["sql"]["calls"], 3, "{:?}", r.body);
    stop(child);
    std::fs::remove_dir_all(&base).unwrap();
}

/// Deletes `key` from the machine's Redis (a RESP command on a connection of its own).
async fn redis_del(key: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect("127.0.0.1:6379")
        .await
        .unwrap();
    let cmd = format!("*2\r\n$3\r\nDEL\r\n${}\r\n{key}\r\n", key.len());
    c.write_all(cmd.as_bytes()).await.unwrap();
    let mut reply = [0u8; 16];
    let n = c.read(&mut reply).await.unwrap();
    assert!(
        reply[..n].starts_with(b":"),
        "DEL answered {:?}",
        &reply[..n]
    );
}
