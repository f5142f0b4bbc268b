//! WebSocket channels against the real binary and real Python workers, with a real client
//! library (tokio-tungstenite): echo of text and binary messages, the client's identity in
//! the service, connect and disconnect hooks, security checked at the upgrade, a message
//! over the limit closed with 1009, a client that never reads disconnected (1008) while
//! others are served, pings to a client that never answers, the idle timeout, the close on
//! shutdown (1001), pushes (send, broadcast) from services, clients that stay connected
//! through a hot deploy, a worker killed with SIGKILL and a SIGHUP rolling restart, a
//! credential in the first message, and Zato 3.2's client protocol as its client speaks it.

use futures_util::{SinkExt, StreamExt};
use oxbus_integration::*;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{WebSocketStream, client_async};

type Ws = WebSocketStream<TcpStream>;

const SERVICES: &str = r#"
import os
import time

from oxbus import Service
from oxbus.wsx import WSXError

DIR = os.environ['WSTEST_DIR']


class Echo(Service):
    name = 'ws.echo'

    def handle(self):
        p = self.request.payload
        if self.wsx.binary:
            self.response.payload = p[::-1]
            return
        cmd = p.get('cmd') if isinstance(p, dict) else None
        if cmd == 'whoami':
            s = self.channel.security
            self.response.payload = {
                'client': self.wsx.client_id, 'type': self.channel.type,
                'channel': self.channel.name, 'event': self.wsx.event,
                'user': s.username if s else None, 'pid': os.getpid(),
                'subject': s.subject if s else None,
                'param': self.request.http.params.get('room'),
            }
        elif cmd == 'broadcast':
            n = self.wsx.channel[p['channel']].broadcast(p['data'])
            self.response.payload = {'queued': n}
        elif cmd == 'send':
            try:
                self.wsx.send(p['to'], p['data'])
            except WSXError as e:
                self.response.payload = {'error': str(e), 'type': type(e).__name__}
            else:
                self.response.payload = {'sent': True}
        elif cmd == 'send-missing':
            try:
                self.wsx.send('ws.nosuchserver.0123456789abcdef', 'x')
            except KeyError as e:
                self.response.payload = {'missing': str(e)}
        elif cmd == 'subscribe':
            try:
                self.response.payload = {
                    'sub_key': self.pubsub.subscribe(p['topic'], use_current_wsx=True)}
            except Exception as e:
                self.response.payload = {'error': str(e), 'type': type(e).__name__}
        elif cmd == 'publish':
            self.response.payload = {'msg_id': self.pubsub.publish(p['topic'], p['data'])}
        elif cmd == 'sleep':
            time.sleep(p['s'])
            self.response.payload = {'slept': p['s']}
        elif cmd == 'silent':
            self.response.payload = None
        elif cmd == 'boom':
            raise ValueError('secret detail')
        elif cmd == 'crash':
            os._exit(3)
        else:
            self.response.payload = {'echo': p}


class Hook(Service):
    name = 'ws.hook'

    def handle(self):
        with open(os.path.join(DIR, 'hooks'), 'a') as f:
            f.write('%s %s %s\n' % (self.wsx.event, self.wsx.client_id, self.channel.name))
"#;

fn marks_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("oxbus-ws-{}-{}", std::process::id(), next_id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn env(dir: &std::path::Path) -> Env {
    Env::new()
        .workers(2)
        .service("wstest.py", SERVICES)
        .env("WSTEST_DIR", dir.to_str().unwrap())
        .channel_toml(
            "type = \"websocket\"\nname = \"echo\"\nurl_path = \"/ws/echo/{room}\"\nservice = \"ws.echo\"\n\
             [channels.websocket]\non_connect = \"ws.hook\"\non_disconnect = \"ws.hook\"\n\
             max_message_bytes = 65536\n",
        )
        .channel_toml(
            "type = \"websocket\"\nname = \"slow\"\nurl_path = \"/ws/slow\"\nservice = \"ws.echo\"\n\
             [channels.websocket]\nmax_queued_bytes = 262144\n",
        )
        .channel_toml(
            "type = \"websocket\"\nname = \"pinged\"\nurl_path = \"/ws/pinged\"\nservice = \"ws.echo\"\n\
             [channels.websocket]\nping_interval_ms = 200\nmax_missed_pongs = 2\n",
        )
        .channel_toml(
            "type = \"websocket\"\nname = \"idle\"\nurl_path = \"/ws/idle\"\nservice = \"ws.echo\"\n\
             [channels.websocket]\nidle_timeout_ms = 1500\n",
        )
        .channel_toml(
            "type = \"websocket\"\nname = \"multi\"\nurl_path = \"/ws/multi\"\nservice = \"ws.echo\"\n\
             [channels.websocket]\nmax_inflight = 4\nallowed_origins = [\"https://ok.example\"]\n",
        )
        .channel("/plain", &["GET"], "ws.echo")
}

async fn connect(srv: &Server, path: &str) -> Ws {
    connect_with(srv, path, &[])
        .await
        .expect("websocket connect")
}

async fn connect_with(srv: &Server, path: &str, headers: &[(&str, &str)]) -> Result<Ws, WsError> {
    let url = format!("ws://127.0.0.1:{}{path}", srv.port());
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().expect("header value"),
        );
    }
    let tcp = TcpStream::connect(("127.0.0.1", srv.port())).await.unwrap();
    client_async(req, tcp).await.map(|(ws, _)| ws)
}

/// The next data message (text parsed as JSON; binary as a JSON string of its hex), within
/// 10 s.
async fn next(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message within 10 s")
            .expect("the stream open")
            .expect("a message");
        match m {
            Message::Text(t) => return serde_json::from_str(&t).expect("JSON text"),
            Message::Binary(b) => return Value::String(hex(&b)),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn ask(ws: &mut Ws, v: Value) -> Value {
    ws.send(Message::text(v.to_string())).await.unwrap();
    next(ws).await
}

/// How the connection ended: the close frame's code (None: no close frame, just the end).
async fn closed(ws: &mut Ws, within: Duration) -> Option<u16> {
    let end = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(end, ws.next()).await {
            Err(_) => panic!("the connection is still open after {within:?}"),
            Ok(None) | Ok(Some(Err(_))) => return None,
            Ok(Some(Ok(Message::Close(f)))) => return f.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => continue,
        }
    }
}

/// How the connection ended: the close frame's code and reason (None: no close frame).
async fn closed_why(ws: &mut Ws, within: Duration) -> Option<(u16, String)> {
    let end = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(end, ws.next()).await {
            Err(_) => panic!("the connection is still open after {within:?}"),
            Ok(None) | Ok(Some(Err(_))) => return None,
            Ok(Some(Ok(Message::Close(f)))) => {
                return f.map(|f| (u16::from(f.code), f.reason.to_string()));
            }
            Ok(Some(Ok(_))) => continue,
        }
    }
}

fn hooks(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("hooks"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn echo_identity_hooks_errors_and_the_handshake_rules() {
    let dir = marks_dir();
    let srv = env(&dir).start().await;

    let mut ws = connect(&srv, "/ws/echo/lobby").await;
    let me = ask(&mut ws, json!({"cmd": "whoami"})).await;
    let id = me["client"].as_str().unwrap().to_owned();
    assert!(id.starts_with("ws."), "{me}");
    assert_eq!(me["type"], "websocket");
    assert_eq!(me["channel"], "echo");
    assert_eq!(me["event"], "message");
    assert_eq!(me["param"], "lobby");
    // Text (JSON) and binary messages, answered in order on one connection.
    for i in 0..20 {
        assert_eq!(
            ask(&mut ws, json!({"n": i})).await,
            json!({"echo": {"n": i}})
        );
    }
    ws.send(Message::binary(vec![1u8, 2, 3, 255]))
        .await
        .unwrap();
    assert_eq!(next(&mut ws).await, json!("ff030201"));
    // A service that answers nothing sends nothing; the next answer is the next message's.
    ws.send(Message::text(json!({"cmd": "silent"}).to_string()))
        .await
        .unwrap();
    assert_eq!(ask(&mut ws, json!("after")).await, json!({"echo": "after"}));
    // A failing service: an error document with the cid, no detail, and the client stays.
    let e = ask(&mut ws, json!({"cmd": "boom"})).await;
    assert_eq!(e["error"], "internal error", "{e}");
    assert!(e["cid"].as_str().is_some_and(|c| !c.is_empty()), "{e}");
    assert!(!e.to_string().contains("secret detail"));
    // Malformed JSON is the service's input error, answered, not a close.
    ws.send(Message::text("{not json")).await.unwrap();
    let e = next(&mut ws).await;
    assert!(
        e["error"].as_str().unwrap().contains("malformed JSON"),
        "{e}"
    );
    assert_eq!(ask(&mut ws, json!(1)).await, json!({"echo": 1}));
    // The connect hook ran for this client; the disconnect hook runs after a close.
    eventually(Duration::from_secs(10), "the connect hook", || {
        let id = id.clone();
        let dir = dir.clone();
        async move {
            hooks(&dir)
                .contains(&format!("connect {id} echo"))
                .then_some(())
        }
    })
    .await;
    ws.close(None).await.unwrap();
    assert_eq!(closed(&mut ws, Duration::from_secs(5)).await, None);
    eventually(Duration::from_secs(10), "the disconnect hook", || {
        let id = id.clone();
        let dir = dir.clone();
        async move {
            hooks(&dir)
                .contains(&format!("disconnect {id} echo"))
                .then_some(())
        }
    })
    .await;

    // Too big: closed with 1009; the server keeps serving others.
    let mut big = connect(&srv, "/ws/echo/x").await;
    big.send(Message::text("x".repeat(70_000))).await.unwrap();
    assert_eq!(closed(&mut big, Duration::from_secs(5)).await, Some(1009));
    let mut ws = connect(&srv, "/ws/echo/x").await;
    assert_eq!(ask(&mut ws, json!(2)).await, json!({"echo": 2}));

    // A plain GET of a WebSocket channel: 426 with Upgrade, and the connection closes.
    let r = srv.get("/ws/slow").await;
    assert_eq!(r.status, 426, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("upgrade").as_deref(), Some("websocket"));
    // A wrong version: 426 naming 13. Any answer but 101 to an upgrade request closes.
    let text = sent_raw(
        &srv,
        b"GET /ws/slow HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
          sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 8\r\n\r\n\
          GET /plain HTTP/1.1\r\nhost: x\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 426"), "{text}");
    assert!(text.contains("sec-websocket-version: 13"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    assert_eq!(
        text.matches("HTTP/1.1").count(),
        1,
        "nothing after it is served: {text}"
    );
    // An upgrade asked of a REST channel: answered as a request, then closed.
    let text = sent_raw(&srv, b"GET /plain HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\nGET /plain HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    srv.assert_no_errors(&["secret detail", "ws.echo failed"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// POSTs `body` to the admin API's `path` on `srv`: it must be created (201).
async fn created(srv: &Server, path: &str, body: Value) {
    let r = srv
        .admin(
            "POST",
            path,
            Some(&srv.admin_token()),
            body.to_string().as_bytes(),
        )
        .await;
    assert_eq!(
        r.status,
        201,
        "{path}: {}",
        String::from_utf8_lossy(&r.body)
    );
}

#[tokio::test]
async fn security_is_checked_at_the_upgrade() {
    let dir = marks_dir();
    let srv = env(&dir).start().await;
    let token = srv.admin_token();
    created(
        &srv,
        "/v1/security",
        json!({"name": "ws-basic", "type": "basic", "username": "ann", "password": "pw-123"}),
    )
    .await;
    created(
        &srv,
        "/v1/channels",
        json!({"type": "websocket", "name": "secured", "url_path": "/ws/secured",
               "service": "ws.echo", "security": "ws-basic",
               "websocket": {"ping_interval_ms": 1000}}),
    )
    .await;
    let bad = format!("Basic {}", base64_of("ann:nope"));
    let good = format!("Basic {}", base64_of("ann:pw-123"));
    for headers in [vec![], vec![("authorization", bad.as_str())]] {
        match connect_with(&srv, "/ws/secured", &headers).await {
            Err(WsError::Http(resp)) => assert_eq!(resp.status(), 401, "{headers:?}"),
            Err(e) => panic!("{headers:?}: {e}"),
            Ok(_) => panic!("{headers:?}: let in"),
        }
    }
    let mut ws = connect_with(&srv, "/ws/secured", &[("authorization", good.as_str())])
        .await
        .expect("the right password is let in");
    let me = ask(&mut ws, json!({"cmd": "whoami"})).await;
    assert_eq!(me["user"], "ann", "{me}");
    // The channel as stored: its settings with every default filled in.
    let r = srv.admin("GET", "/v1/channels", Some(&token), b"").await;
    let all = r.json();
    let ch = all["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "secured")
        .cloned()
        .unwrap_or_else(|| panic!("{all}"));
    assert_eq!(ch["type"], "websocket", "{ch}");
    assert_eq!(ch["websocket"]["ping_interval_ms"], 1000, "{ch}");
    // Bad settings are refused with the setting named.
    let r = srv
        .admin(
            "POST",
            "/v1/channels",
            Some(&token),
            json!({"type": "websocket", "name": "bad", "url_path": "/ws/bad", "service": "ws.echo",
                   "websocket": {"max_message_bytes": 0}})
            .to_string()
            .as_bytes(),
        )
        .await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains("max_message_bytes"));
    // A refusal answers the head and closes: a request pipelined behind it is not served.
    let text = sent_raw(
        &srv,
        b"GET /ws/secured HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
          sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n\
          GET /plain HTTP/1.1\r\nhost: x\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{text}");
    // The same for a path no channel has (404).
    let text = sent_raw(
        &srv,
        b"GET /ws/none HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n\
          GET /plain HTTP/1.1\r\nhost: x\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 404"), "{text}");
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{text}");

    // The password changes: the connected client is closed (1012) and must log in again.
    let r = srv
        .admin(
            "PUT",
            "/v1/security/ws-basic",
            Some(&token),
            json!({"name": "ws-basic", "type": "basic", "username": "ann", "password": "pw-456"})
                .to_string()
                .as_bytes(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(closed(&mut ws, Duration::from_secs(10)).await, Some(1012));
    assert!(
        connect_with(&srv, "/ws/secured", &[("authorization", good.as_str())])
            .await
            .is_err(),
        "the old password no longer opens it"
    );
    let new = format!("Basic {}", base64_of("ann:pw-456"));
    let mut ws = connect_with(&srv, "/ws/secured", &[("authorization", new.as_str())])
        .await
        .expect("the new password is let in");
    // A change to another channel leaves it connected; deleting its own closes it.
    let mut other = connect(&srv, "/ws/slow").await;
    let r = srv
        .admin("DELETE", "/v1/channels/secured", Some(&token), b"")
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(closed(&mut ws, Duration::from_secs(10)).await, Some(1012));
    assert_eq!(ask(&mut other, json!(7)).await, json!({"echo": 7}));
    let _ = std::fs::remove_dir_all(&dir);
}

/// An HS256 JWT for subject `sub`, valid for 5 minutes.
fn hs256(secret: &str, sub: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 300;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": sub, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn credentials_in_the_first_message() {
    let dir = marks_dir();
    let srv = env(&dir).start().await;
    let token = srv.admin_token();
    created(
        &srv,
        "/v1/security",
        json!({"name": "ws-jwt", "type": "jwt", "algorithms": ["HS256"], "secret": "hs-secret-0123456789"}),
    )
    .await;
    created(
        &srv,
        "/v1/security",
        json!({"name": "ws-pw", "type": "basic", "username": "bob", "password": "pw-789"}),
    )
    .await;
    created(
        &srv,
        "/v1/channels",
        json!({"type": "websocket", "name": "firstjwt", "url_path": "/ws/firstjwt",
               "service": "ws.echo", "security": "ws-jwt",
               "websocket": {"first_message_auth": true, "auth_timeout_ms": 1500,
                             "on_connect": "ws.hook", "on_disconnect": "ws.hook"}}),
    )
    .await;
    created(
        &srv,
        "/v1/channels",
        json!({"type": "websocket", "name": "firstpw", "url_path": "/ws/firstpw",
               "service": "ws.echo", "security": "ws-pw",
               "websocket": {"first_message_auth": true}}),
    )
    .await;
    // Without a security definition there is nothing to send: refused, named.
    let r = srv
        .admin(
            "POST",
            "/v1/channels",
            Some(&token),
            json!({"type": "websocket", "name": "nosec", "url_path": "/ws/nosec", "service": "ws.echo",
                   "websocket": {"first_message_auth": true}})
            .to_string()
            .as_bytes(),
        )
        .await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains("first_message_auth"));

    let good = hs256("hs-secret-0123456789", "user-9");
    // Opened without a credential; a broadcast to the channel meanwhile does not reach it.
    let mut pending = connect(&srv, "/ws/firstjwt").await;
    let mut other = connect_with(
        &srv,
        "/ws/firstjwt",
        &[("authorization", &format!("Bearer {good}"))],
    )
    .await
    .expect("a credential at the upgrade still works");
    let me = ask(&mut other, json!({"cmd": "whoami"})).await;
    assert_eq!(me["subject"], "user-9", "{me}");
    // The broadcaster is a client of the channel too: the push comes before the answer.
    let pushed = ask(
        &mut other,
        json!({"cmd": "broadcast", "channel": "firstjwt", "data": {"n": "before"}}),
    )
    .await;
    assert_eq!(pushed, json!({"n": "before"}));
    let sent = next(&mut other).await;
    assert_eq!(sent["queued"], 1, "only the admitted client: {sent}");
    // Only the admitted client ran the connect hook so far.
    let connects = || {
        hooks(&dir)
            .iter()
            .filter(|l| l.starts_with("connect") && l.ends_with("firstjwt"))
            .count()
    };
    assert_eq!(connects(), 1, "{:?}", hooks(&dir));
    let hello = ask(&mut pending, json!({"token": good})).await;
    assert_eq!(hello["authenticated"], true, "{hello}");
    let id = hello["client_id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("ws."), "{hello}");
    let me = ask(&mut pending, json!({"cmd": "whoami"})).await;
    assert_eq!(me["subject"], "user-9", "{me}");
    assert_eq!(me["client"], id.as_str(), "{me}");
    assert_eq!(connects(), 2, "{:?}", hooks(&dir));
    let pushed = ask(
        &mut other,
        json!({"cmd": "broadcast", "channel": "firstjwt", "data": {"n": "after"}}),
    )
    .await;
    assert_eq!(pushed, json!({"n": "after"}));
    assert_eq!(next(&mut other).await["queued"], 2);
    assert_eq!(next(&mut pending).await, json!({"n": "after"}));

    // A wrong token, a message that is no credential, a binary one: closed with 1008.
    for first in [
        Message::text(json!({"token": hs256("another-secret-0000000", "x")}).to_string()),
        Message::text(json!({"cmd": "whoami"}).to_string()),
        Message::binary(b"\x01\x02".to_vec()),
    ] {
        let mut ws = connect(&srv, "/ws/firstjwt").await;
        ws.send(first.clone()).await.unwrap();
        assert_eq!(
            closed_why(&mut ws, Duration::from_secs(5)).await,
            Some((1008, "authentication failed".to_owned())),
            "{first:?}"
        );
    }
    // Nothing within auth_timeout_ms: closed with 1008.
    let mut silent = connect(&srv, "/ws/firstjwt").await;
    let t0 = std::time::Instant::now();
    assert_eq!(
        closed_why(&mut silent, Duration::from_secs(10)).await,
        Some((1008, "authentication timeout".to_owned()))
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(1000),
        "{:?}",
        t0.elapsed()
    );
    // A client that has not authenticated may not make the server read much: 40 KiB of
    // message ends the connection (the read budget is 32 KiB).
    let mut greedy = connect(&srv, "/ws/firstjwt").await;
    let _ = greedy.send(Message::text("x".repeat(40 * 1024))).await;
    // Refused at once (the close frame may be lost to a reset: the server did not read
    // all that was sent); the timeout's close would mean it was all read.
    let end = closed_why(&mut greedy, Duration::from_secs(5)).await;
    assert!(
        end.is_none() || end == Some((1008, "authentication failed".to_owned())),
        "{end:?}"
    );
    // A wrong credential at the upgrade is still refused there.
    match connect_with(&srv, "/ws/firstjwt", &[("authorization", "Bearer nope")]).await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status(), 401),
        other => panic!("{:?}", other.map(|_| ())),
    }

    // Basic: a user name and password.
    let mut ws = connect(&srv, "/ws/firstpw").await;
    let hello = ask(&mut ws, json!({"username": "bob", "password": "pw-789"})).await;
    assert_eq!(hello["authenticated"], true, "{hello}");
    assert_eq!(ask(&mut ws, json!({"cmd": "whoami"})).await["user"], "bob");
    let mut ws = connect(&srv, "/ws/firstpw").await;
    ws.send(Message::text(
        json!({"username": "bob", "password": "wrong"}).to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(
        closed_why(&mut ws, Duration::from_secs(5)).await,
        Some((1008, "authentication failed".to_owned()))
    );
    // The pending clients that were refused ran no hooks.
    drop(pending);
    drop(other);
    let disconnects = || {
        hooks(&dir)
            .iter()
            .filter(|l| l.starts_with("disconnect") && l.ends_with("firstjwt"))
            .count()
    };
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while disconnects() < 2 && std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The refused clients' sessions ended seconds ago: a hook of theirs would be in the file.
    assert_eq!(disconnects(), 2, "{:?}", hooks(&dir));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A message as Zato's `wsx_client` writes it (json.dumps: spaces; nulls where unset).
fn zato_msg(action: &str, id: &str, token: Option<&str>, extra: Value, data: Value) -> Message {
    let mut meta = json!({"id": id, "action": action, "attrs": null,
        "timestamp": "2026-12-07T12:00:00.123456", "client_id": "123456",
        "client_name": "Zato test client", "token": token.unwrap_or(""), "in_reply_to": null});
    for (k, v) in extra.as_object().unwrap() {
        meta[k] = v.clone();
    }
    let text = format!(
        "{{\"meta\": {}, \"data\": {}}}",
        serde_json::to_string_pretty(&meta)
            .unwrap()
            .replace('\n', " "),
        data
    );
    Message::text(text)
}

#[tokio::test]
async fn zato_protocol_with_a_zato_style_client() {
    let dir = marks_dir();
    let srv = env(&dir).start().await;
    let token = srv.admin_token();
    created(
        &srv,
        "/v1/security",
        json!({"name": "zato-basic", "type": "basic", "username": "user1", "password": "secret1"}),
    )
    .await;
    created(
        &srv,
        "/v1/channels",
        json!({"type": "websocket", "name": "zgw", "url_path": "/zato/wsx/gw",
               "service": "ws.echo", "services": ["ws.echo"], "security": "zato-basic",
               "websocket": {"protocol": "zato", "auth_timeout_ms": 1500}}),
    )
    .await;
    created(
        &srv,
        "/v1/channels",
        json!({"type": "websocket", "name": "zopen", "url_path": "/zato/wsx/open",
               "service": "ws.echo", "websocket": {"protocol": "zato"}}),
    )
    .await;
    // A services list is refused on a raw channel.
    let r = srv
        .admin(
            "POST",
            "/v1/channels",
            Some(&token),
            json!({"type": "websocket", "name": "rawlist", "url_path": "/ws/rawlist", "service": "ws.echo",
                   "services": ["ws.echo"]})
            .to_string()
            .as_bytes(),
        )
        .await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));

    // create-session with the channel's credentials: zwsx.rspa with the token.
    let mut ws = connect(&srv, "/zato/wsx/gw").await;
    let create = |id: &str, user: &str, secret: &str| {
        zato_msg(
            "create-session",
            id,
            None,
            json!({"username": user, "secret": secret}),
            json!({}),
        )
    };
    ws.send(create("zwsxc.auth.01", "user1", "secret1"))
        .await
        .unwrap();
    let a = next(&mut ws).await;
    assert_eq!(a["meta"]["msg_type"], "zwsx.rspa", "{a}");
    assert_eq!(a["meta"]["status"], 200, "{a}");
    assert_eq!(a["meta"]["in_reply_to"], "zwsxc.auth.01", "{a}");
    let tok = a["data"]["token"].as_str().unwrap().to_owned();
    assert!(tok.starts_with("zwsxt."), "{a}");
    // invoke-service through the gateway list: data.service, data.request.
    let invoke = |id: &str, tok: &str, service: &str, request: Value| {
        zato_msg(
            "invoke-service",
            id,
            Some(tok),
            json!({}),
            json!({"service": service, "request": request}),
        )
    };
    ws.send(invoke(
        "zwsxc.inv.01",
        &tok,
        "ws.echo",
        json!({"cmd": "whoami"}),
    ))
    .await
    .unwrap();
    let r = next(&mut ws).await;
    assert_eq!(r["meta"]["msg_type"], "zwsx.rspok", "{r}");
    assert_eq!(r["meta"]["status"], 200, "{r}");
    assert_eq!(r["meta"]["in_reply_to"], "zwsxc.inv.01", "{r}");
    assert_eq!(r["data"]["user"], "user1", "{r}");
    assert_eq!(r["data"]["type"], "websocket", "{r}");
    let me = r["data"]["client"].as_str().unwrap().to_owned();
    // A service not on the list: 403, the session goes on.
    ws.send(invoke(
        "zwsxc.inv.02",
        &tok,
        "zato.secret.service",
        json!({}),
    ))
    .await
    .unwrap();
    let r = next(&mut ws).await;
    assert_eq!(r["meta"]["msg_type"], "zwsx.rsperr", "{r}");
    assert_eq!(r["meta"]["status"], 403, "{r}");
    assert_eq!(r["meta"]["in_reply_to"], "zwsxc.inv.02", "{r}");
    assert_eq!(
        r["meta"]["error_message"],
        "You are not allowed to access this resource"
    );
    // A service that raises: 500 in Zato's words, the cid in data, no detail.
    ws.send(invoke(
        "zwsxc.inv.03",
        &tok,
        "ws.echo",
        json!({"cmd": "boom"}),
    ))
    .await
    .unwrap();
    let r = next(&mut ws).await;
    assert_eq!(r["meta"]["status"], 500, "{r}");
    assert_eq!(r["meta"]["error_message"], "Internal server error", "{r}");
    assert!(r["data"]["cid"].is_string(), "{r}");
    assert!(!r.to_string().contains("secret detail"), "{r}");
    // An empty answer: rspok without data.
    ws.send(invoke(
        "zwsxc.inv.04",
        &tok,
        "ws.echo",
        json!({"cmd": "silent"}),
    ))
    .await
    .unwrap();
    let r = next(&mut ws).await;
    assert_eq!(r["meta"]["msg_type"], "zwsx.rspok", "{r}");
    assert!(r.get("data").is_none(), "{r}");
    // A push from a service reaches it as a zwsx.rqc request; a send to its id too.
    let mut raw = connect(&srv, "/ws/slow").await;
    let sent = ask(
        &mut raw,
        json!({"cmd": "broadcast", "channel": "zgw", "data": {"note": "to all"}}),
    )
    .await;
    assert_eq!(sent["queued"], 1, "{sent}");
    let p = next(&mut ws).await;
    assert_eq!(p["meta"]["msg_type"], "zwsx.rqc", "{p}");
    assert_eq!(p["data"]["note"], "to all", "{p}");
    let sent = ask(
        &mut raw,
        json!({"cmd": "send", "to": me, "data": "just you"}),
    )
    .await;
    assert_eq!(sent["sent"], true, "{sent}");
    assert_eq!(next(&mut ws).await["data"], "just you");
    // A client response (to a request Oxbus does not wait for) is taken quietly, with the
    // token or without (Zato's client answers a push that came before it read its token
    // with an empty one).
    for t in [Some(tok.as_str()), None] {
        ws.send(zato_msg(
            "client-response",
            "zwsxc.rsp.01",
            t,
            json!({"in_reply_to": p["meta"]["id"]}),
            json!({"response": "ok"}),
        ))
        .await
        .unwrap();
    }
    // A malformed message: zwsx.merr 400, the session goes on.
    ws.send(Message::text("{\"data\": 1}")).await.unwrap();
    let r = next(&mut ws).await;
    assert_eq!(r["meta"]["msg_type"], "zwsx.merr", "{r}");
    assert_eq!(r["meta"]["status"], 400, "{r}");
    // create-session again: a new token; the old one is refused from then on.
    ws.send(create("zwsxc.auth.02", "user1", "secret1"))
        .await
        .unwrap();
    let a = next(&mut ws).await;
    let tok2 = a["data"]["token"].as_str().unwrap().to_owned();
    assert_ne!(tok, tok2);
    ws.send(invoke("zwsxc.inv.05", &tok2, "ws.echo", json!(5)))
        .await
        .unwrap();
    assert_eq!(next(&mut ws).await["data"], json!({"echo": 5}));
    ws.send(invoke("zwsxc.inv.06", &tok, "ws.echo", json!(6)))
        .await
        .unwrap();
    let r = next(&mut ws).await;
    assert_eq!(r["meta"]["msg_type"], "zwsx.merr", "{r}");
    assert_eq!(r["meta"]["status"], 403, "{r}");
    assert_eq!(
        closed_why(&mut ws, Duration::from_secs(5)).await,
        Some((1008, "invalid or missing session token".to_owned()))
    );

    // Wrong credentials, a request before create-session, no create-session at all:
    // zwsx.merr 403, then the close.
    for (first, why) in [
        (
            Some(create("zwsxc.auth.03", "user1", "wrong")),
            "authentication failed",
        ),
        (
            Some(invoke("zwsxc.inv.07", "zwsxt.guess", "ws.echo", json!(1))),
            "not authenticated: create-session first",
        ),
        (
            Some(Message::text("{}")),
            "not authenticated: create-session first",
        ),
        (None, "authentication timeout"),
    ] {
        let mut ws = connect(&srv, "/zato/wsx/gw").await;
        if let Some(m) = first.clone() {
            ws.send(m).await.unwrap();
        }
        let r = next(&mut ws).await;
        assert_eq!(r["meta"]["msg_type"], "zwsx.merr", "{first:?}: {r}");
        assert_eq!(r["meta"]["status"], 403, "{r}");
        assert_eq!(
            r["data"], "You are not authorized to access this resource",
            "{r}"
        );
        assert_eq!(
            closed_why(&mut ws, Duration::from_secs(5)).await,
            Some((1008, why.to_owned())),
            "{first:?}"
        );
    }

    // A channel without security: create-session with no secret; without a services list
    // the channel's service gets data whole.
    let mut ws = connect(&srv, "/zato/wsx/open").await;
    ws.send(zato_msg("create-session", "a1", None, json!({}), json!({})))
        .await
        .unwrap();
    let a = next(&mut ws).await;
    let tok = a["data"]["token"].as_str().unwrap().to_owned();
    ws.send(invoke("i1", &tok, "anything", json!({"k": 1})))
        .await
        .unwrap();
    let r = next(&mut ws).await;
    assert_eq!(
        r["data"],
        json!({"echo": {"service": "anything", "request": {"k": 1}}}),
        "{r}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn base64_of(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test]
async fn slow_clients_silent_clients_idle_clients_and_shutdown() {
    let dir = marks_dir();
    let mut srv = env(&dir).start().await;

    // A client that never reads, on a channel that queues at most 256 KiB per client.
    let mut lazy = connect(&srv, "/ws/slow").await;
    let lazy_id = ask(&mut lazy, json!({"cmd": "whoami"})).await["client"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut busy = connect(&srv, "/ws/slow").await;
    let chunk = "y".repeat(60_000);
    // 400 broadcasts of 60 KB (24 MB) to every client of the channel: far more than the
    // socket buffers and the queue bound hold for the one that does not read.
    let mut dropped = false;
    for i in 0..400 {
        let a = ask(
            &mut busy,
            json!({"cmd": "send", "to": lazy_id, "data": chunk}),
        )
        .await;
        if a["error"].is_string() {
            // The queue overflowed: the client is being disconnected (or already gone).
            assert!(
                a["type"] == "ClientQueueFull" || a["type"] == "UnknownClient",
                "{a}"
            );
            dropped = true;
            break;
        }
        assert_eq!(a, json!({"sent": true}), "send {i}");
    }
    assert!(dropped, "the lazy client was never cut off");
    // The busy client is served on.
    assert_eq!(
        ask(&mut busy, json!("still")).await,
        json!({"echo": "still"})
    );
    // The lazy one, still reading nothing, is gone from the server within the close wait
    // (it cannot even take the close frame): the gauge says one client is left.
    let token = srv.admin_token();
    eventually(Duration::from_secs(10), "the lazy client cut off", || {
        let (srv, token) = (&srv, &token);
        async move {
            let m = srv.admin("GET", "/metrics", Some(token), b"").await;
            let text = String::from_utf8_lossy(&m.body).into_owned();
            (text.contains("oxbus_websocket_clients{channel=\"slow\"} 1")
                && text.contains(
                    "oxbus_websocket_disconnects_total{channel=\"slow\",reason=\"queue_full\"} 1",
                ))
            .then_some(())
        }
    })
    .await;
    // Its socket was closed by the server: reading it now ends (after what was in flight),
    // within a bound.
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(_)) = lazy.next().await {}
    })
    .await
    .expect("the lazy client's connection was cut");

    // A client that answers no ping (a raw socket after the handshake): dropped after the
    // pings it may miss; its socket reads the pings, then the end.
    let mut raw = TcpStream::connect(("127.0.0.1", srv.port())).await.unwrap();
    raw.write_all(
        b"GET /ws/pinged HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
          sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(10), raw.read_to_end(&mut got))
        .await
        .expect("the server drops a client that answers no ping")
        .unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    assert!(
        text.contains("sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{text}"
    );
    // Pings are frames 0x89 0x00 (no payload) after the head.
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let frames = &got[head_end..];
    // Only pings (0x89 0x00), two of them (the third tick drops the client; under heavy
    // load the second may still be queued then, and is dropped), and no close frame.
    assert!(
        frames == b"\x89\x00\x89\x00" || frames == b"\x89\x00",
        "{frames:?}"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(5),
        "{took:?}"
    );
    // A client whose call runs longer than the ping window is not dropped: its pongs wait
    // unread while its call runs.
    let mut busy_one = connect(&srv, "/ws/pinged").await;
    assert_eq!(
        ask(&mut busy_one, json!({"cmd": "sleep", "s": 1.2})).await,
        json!({"slept": 1.2})
    );
    assert_eq!(ask(&mut busy_one, json!(6)).await, json!({"echo": 6}));

    // A client that answers pings (the library does) but sends nothing: the idle timeout.
    let mut idle = connect(&srv, "/ws/idle").await;
    assert_eq!(closed(&mut idle, Duration::from_secs(10)).await, Some(1000));

    // Shutdown: connected clients are told 1001.
    let mut ws = connect(&srv, "/ws/echo/z").await;
    assert_eq!(ask(&mut ws, json!(3)).await, json!({"echo": 3}));
    srv.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(closed(&mut ws, Duration::from_secs(20)).await, Some(1001));
    assert_eq!(srv.wait_exit(Duration::from_secs(30)), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn origins_and_calls_in_parallel() {
    let dir = marks_dir();
    let srv = env(&dir).start().await;
    // allowed_origins: another page's Origin is refused; the allowed one and none pass.
    match connect_with(&srv, "/ws/multi", &[("origin", "https://evil.example")]).await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status(), 403),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a foreign origin was let in"),
    }
    let _ok = connect_with(&srv, "/ws/multi", &[("origin", "https://ok.example")])
        .await
        .expect("the allowed origin");
    // max_inflight = 4: a slow call does not hold a quick one behind it.
    let mut ws = connect(&srv, "/ws/multi").await;
    ws.send(Message::text(json!({"cmd": "sleep", "s": 1.5}).to_string()))
        .await
        .unwrap();
    ws.send(Message::text(json!("quick").to_string()))
        .await
        .unwrap();
    assert_eq!(next(&mut ws).await, json!({"echo": "quick"}));
    assert_eq!(next(&mut ws).await, json!({"slept": 1.5}));
    // max_inflight = 1 (the default): answers in the order of the messages.
    let mut ws = connect(&srv, "/ws/slow").await;
    ws.send(Message::text(json!({"cmd": "sleep", "s": 0.5}).to_string()))
        .await
        .unwrap();
    ws.send(Message::text(json!("second").to_string()))
        .await
        .unwrap();
    assert_eq!(next(&mut ws).await, json!({"slept": 0.5}));
    assert_eq!(next(&mut ws).await, json!({"echo": "second"}));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn pushes_reach_one_client_or_every_client_of_a_channel() {
    let dir = marks_dir();
    let srv = env(&dir).start().await;
    let mut a = connect(&srv, "/ws/echo/a").await;
    let mut b = connect(&srv, "/ws/echo/b").await;
    let mut other = connect(&srv, "/ws/slow").await;
    let b_id = ask(&mut b, json!({"cmd": "whoami"})).await["client"]
        .as_str()
        .unwrap()
        .to_owned();
    // A send from a's service to b.
    assert_eq!(
        ask(
            &mut a,
            json!({"cmd": "send", "to": b_id, "data": {"hi": "b"}})
        )
        .await,
        json!({"sent": true})
    );
    assert_eq!(next(&mut b).await, json!({"hi": "b"}));
    // A broadcast to the echo channel: a and b get it, the slow channel's client does not.
    let r = ask(
        &mut a,
        json!({"cmd": "broadcast", "channel": "echo", "data": {"all": 1}}),
    )
    .await;
    // a's own copy may arrive before or after the answer.
    let (answer, copy) = if r == json!({"all": 1}) {
        (next(&mut a).await, r)
    } else {
        (r, next(&mut a).await)
    };
    assert_eq!(answer, json!({"queued": 2}));
    assert_eq!(copy, json!({"all": 1}));
    assert_eq!(next(&mut b).await, json!({"all": 1}));
    assert_eq!(ask(&mut other, json!(4)).await, json!({"echo": 4}));
    // A client that is not connected anywhere: KeyError (UnknownClient) in the service.
    let r = ask(&mut a, json!({"cmd": "send-missing"})).await;
    assert!(
        r["missing"].as_str().unwrap().contains("ws.nosuchserver"),
        "{r}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn pushes_cross_a_cluster_of_three_servers() {
    let dir = marks_dir();
    let (_, db) = Env::new().postgres_store();
    let secret = cluster_secret("ws");
    let url = format!("{:?}", db.url);
    let mut servers = Vec::new();
    for name in ["a", "b", "c"] {
        servers.push(env(&dir).bus_member(&url, name, &secret).start().await);
    }
    oxbus_integration::bus::linked(&servers[0], &["b", "c"]).await;
    oxbus_integration::bus::linked(&servers[1], &["a", "c"]).await;
    oxbus_integration::bus::linked(&servers[2], &["a", "b"]).await;
    let mut clients = Vec::new();
    for s in &servers {
        clients.push(connect(s, "/ws/echo/r").await);
        clients.push(connect(s, "/ws/slow").await);
    }
    let mut ids = Vec::new();
    for ws in clients.iter_mut() {
        ids.push(
            ask(ws, json!({"cmd": "whoami"})).await["client"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert!(ids[0].starts_with("ws.a."), "{ids:?}");
    assert!(ids[4].starts_with("ws.c."), "{ids:?}");
    // From a client on A: a send to the echo client on C.
    let r = ask(
        &mut clients[0],
        json!({"cmd": "send", "to": ids[4], "data": {"from": "a"}}),
    )
    .await;
    assert_eq!(r, json!({"sent": true}));
    assert_eq!(next(&mut clients[4]).await, json!({"from": "a"}));
    // A broadcast from B's slow-channel client to the echo channel: every echo client, on
    // every server, gets it once; the slow channel's clients do not.
    let r = ask(
        &mut clients[3],
        json!({"cmd": "broadcast", "channel": "echo", "data": {"all": "b"}}),
    )
    .await;
    assert_eq!(r, json!({"queued": 1}), "B has one echo client");
    for i in [0, 2, 4] {
        assert_eq!(
            next(&mut clients[i]).await,
            json!({"all": "b"}),
            "client {i}"
        );
    }
    for i in [1, 3, 5] {
        assert_eq!(
            ask(&mut clients[i], json!(i)).await,
            json!({"echo": i}),
            "client {i}"
        );
    }
    // Pub/sub to a WebSocket subscriber on another server: a subscription made through
    // A's admin API (A delivers it) for C's echo client goes over the bus.
    let token = servers[0].admin_token();
    for (method, path, body) in [
        ("PUT", "/v1/pubsub/topics/wsx/cluster".to_owned(), json!({})),
        (
            "PUT",
            "/v1/pubsub/subs/sk.wsx-c".to_owned(),
            json!({"topic": "/wsx/cluster", "delivery": {"type": "websocket", "client_id": ids[4]}}),
        ),
    ] {
        let r = servers[0]
            .admin(method, &path, Some(&token), body.to_string().as_bytes())
            .await;
        assert_eq!(
            r.status,
            201,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    let r = ask(
        &mut clients[1],
        json!({"cmd": "publish", "topic": "/wsx/cluster", "data": {"to": "c"}}),
    )
    .await;
    assert!(r["msg_id"].is_string(), "{r}");
    let got = next(&mut clients[4]).await;
    assert_eq!(got["sub_key"], "sk.wsx-c", "{got}");
    assert_eq!(got["messages"][0]["data"], r#"{"to":"c"}"#, "{got}");
    // C's client goes: C drops its subscription (once C knows of it: a subscription made
    // elsewhere an instant before its client left is dropped at its next delivery).
    let made = oxbus_integration::api::config_version(&servers[0]).await;
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while applied_version(&servers[2]).await < made {
        assert!(std::time::Instant::now() < until, "C never caught up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(clients.remove(4));
    wait_until_unsubscribed(&servers[0], "sk.wsx-c").await;
    // The admin API lists every server's clients, and closes one wherever it is.
    let all = ws_clients(&servers[0], "").await;
    assert_eq!(all["count"], 5, "{all}");
    for name in ["a", "b", "c"] {
        assert_eq!(all["servers"][name]["answered"], true, "{all}");
    }
    let echo = ws_clients(&servers[1], "?channel=echo").await;
    assert_eq!(echo["count"], 2, "{echo}");
    let one = ws_clients(&servers[1], "?limit=1").await;
    assert_eq!(one["count"], 5, "{one}");
    assert_eq!(one["servers"]["a"]["total"], 2, "{one}");
    assert_eq!(
        one["servers"]["a"]["clients"].as_array().unwrap().len(),
        1,
        "{one}"
    );
    let c1 = &echo["servers"]["a"]["clients"][0];
    assert_eq!(c1["client_id"], ids[0].as_str(), "{echo}");
    assert_eq!(c1["channel"], "echo", "{echo}");
    assert_eq!(c1["protocol"], "raw", "{echo}");
    assert_eq!(c1["authenticated"], true, "{echo}");
    assert_eq!(c1["remote_addr"], "127.0.0.1", "{echo}");
    assert!(c1["messages_in"].as_u64().unwrap() >= 2, "{echo}");
    // The CLI shows the same list.
    let out = servers[2].cli(&["websocket", "clients", "--channel", "echo"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(&ids[0]) && text.contains(&ids[2]), "{text}");
    assert!(text.contains("2 connected"), "{text}");
    // ids[5]: the slow-channel client on C, closed through A's admin API.
    let r = servers[0]
        .admin(
            "DELETE",
            &format!("/v1/websocket/clients/{}", ids[5]),
            Some(&token),
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let mut closed_client = clients.remove(4);
    assert_eq!(
        closed_why(&mut closed_client, Duration::from_secs(5)).await,
        Some((4005, "disconnected by an operator".to_owned()))
    );
    let out = servers[1].cli(&["websocket", "disconnect", &ids[5]]);
    assert!(!out.status.success(), "an unknown client is an error");
    for (id, status) in [(ids[5].as_str(), 404), ("nope", 400)] {
        let r = servers[0]
            .admin(
                "DELETE",
                &format!("/v1/websocket/clients/{id}"),
                Some(&token),
                b"",
            )
            .await;
        assert_eq!(
            r.status,
            status,
            "{id}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    // A client of a server that went away: the send says so.
    let gone = ids[2].clone();
    let mut b = servers.remove(1);
    b.signal(nix::sys::signal::Signal::SIGKILL);
    b.wait_exit(Duration::from_secs(10));
    let r = ask(
        &mut clients[0],
        json!({"cmd": "send", "to": gone, "data": "x"}),
    )
    .await;
    assert_eq!(r["type"], "UnknownClient", "{r}");
    // The admin list names the server that went away instead of leaving it out.
    let after = ws_clients(&servers[0], "").await;
    assert_eq!(after["servers"]["b"]["answered"], false, "{after}");
    assert_eq!(after["servers"]["a"]["answered"], true, "{after}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `GET /v1/websocket/clients{query}` on `srv`.
async fn ws_clients(srv: &Server, query: &str) -> Value {
    let path = format!("/v1/websocket/clients{query}");
    srv.admin("GET", &path, Some(&srv.admin_token()), b"")
        .await
        .json()
}

/// The config version `srv` has applied (`GET /v1/cluster`).
async fn applied_version(srv: &Server) -> i64 {
    let r = srv
        .admin("GET", "/v1/cluster", Some(&srv.admin_token()), b"")
        .await
        .json();
    r["servers"]
        .as_array()
        .and_then(|l| l.iter().find(|s| s["this_server"] == true))
        .and_then(|s| s["config_version"].as_i64())
        .unwrap_or_else(|| panic!("{r}"))
}

/// Waits (up to 15 s) until subscription `sub_key` is gone from the admin API.
async fn wait_until_unsubscribed(srv: &Server, sub_key: &str) {
    let token = srv.admin_token();
    let until = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let r = srv
            .admin(
                "GET",
                &format!("/v1/pubsub/subs/{sub_key}"),
                Some(&token),
                b"",
            )
            .await;
        if r.status == 404 {
            return;
        }
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert!(
            std::time::Instant::now() < until,
            "{sub_key} still there: {}",
            String::from_utf8_lossy(&r.body)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn pubsub_messages_reach_websocket_subscribers() {
    let dir = marks_dir();
    let srv = env(&dir).start().await;
    let token = srv.admin_token();
    // A WebSocket subscriber is the endpoint of its channel's security definition.
    for (method, path, body) in [
        ("PUT", "/v1/pubsub/topics/wsx/news", json!({})),
        ("PUT", "/v1/pubsub/topics/other", json!({})),
        (
            "POST",
            "/v1/security",
            json!({"name": "ws-sub", "type": "basic", "username": "sub", "password": "pw-sub"}),
        ),
        (
            "PUT",
            "/v1/pubsub/endpoints/wsx-readers",
            json!({"security": "ws-sub", "topic_patterns": ["sub=/wsx/*"]}),
        ),
        (
            "POST",
            "/v1/channels",
            json!({"type": "websocket", "name": "subs", "url_path": "/ws/subs",
                   "service": "ws.echo", "security": "ws-sub"}),
        ),
        (
            "POST",
            "/v1/channels",
            json!({"type": "websocket", "name": "zps", "url_path": "/zato/wsx/ps",
                   "service": "ws.echo", "services": ["ws.echo"], "security": "ws-sub",
                   "websocket": {"protocol": "zato"}}),
        ),
    ] {
        let r = srv
            .admin(method, path, Some(&token), body.to_string().as_bytes())
            .await;
        assert_eq!(
            r.status,
            201,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    // A client of an open channel may not subscribe; one of a secured channel only where
    // its endpoint's sub= patterns say.
    let mut open = connect(&srv, "/ws/echo/r").await;
    let r = ask(&mut open, json!({"cmd": "subscribe", "topic": "/wsx/news"})).await;
    assert_eq!(r["type"], "PubSubForbidden", "{r}");
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("without a security definition"),
        "{r}"
    );
    let basic = format!("Basic {}", base64_of("sub:pw-sub"));
    let mut sub = connect_with(&srv, "/ws/subs", &[("authorization", basic.as_str())])
        .await
        .unwrap();
    let r = ask(&mut sub, json!({"cmd": "subscribe", "topic": "/other"})).await;
    assert_eq!(r["type"], "PubSubForbidden", "{r}");
    // A raw client subscribes itself through its service.
    let r = ask(&mut sub, json!({"cmd": "subscribe", "topic": "/wsx/news"})).await;
    let sub_key = r["sub_key"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned();
    let r = srv
        .admin(
            "GET",
            &format!("/v1/pubsub/subs/{sub_key}"),
            Some(&token),
            b"",
        )
        .await;
    assert_eq!(
        r.json()["delivery"]["type"],
        "websocket",
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    // A Zato client subscribes through the gateway list.
    let mut z = connect(&srv, "/zato/wsx/ps").await;
    z.send(zato_msg(
        "create-session",
        "a1",
        None,
        json!({"username": "sub", "secret": "pw-sub"}),
        json!({}),
    ))
    .await
    .unwrap();
    let tok = next(&mut z).await["data"]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    z.send(zato_msg(
        "invoke-service",
        "i1",
        Some(&tok),
        json!({}),
        json!({"service": "ws.echo", "request": {"cmd": "subscribe", "topic": "/wsx/news"}}),
    ))
    .await
    .unwrap();
    let r = next(&mut z).await;
    let zato_key = r["data"]["sub_key"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned();
    assert_ne!(zato_key, sub_key);
    // Another client publishes three messages: each subscriber gets them, in order.
    let mut publisher = connect(&srv, "/ws/slow").await;
    let mut ids = Vec::new();
    for n in 0..3 {
        let r = ask(
            &mut publisher,
            json!({"cmd": "publish", "topic": "/wsx/news", "data": {"n": n}}),
        )
        .await;
        ids.push(
            r["msg_id"]
                .as_str()
                .unwrap_or_else(|| panic!("{r}"))
                .to_owned(),
        );
    }
    for (n, id) in ids.iter().enumerate() {
        let got = next(&mut sub).await;
        assert_eq!(got["sub_key"], sub_key.as_str(), "{got}");
        let m = &got["messages"][0];
        assert_eq!(m["msg_id"], id.as_str(), "{got}");
        assert_eq!(m["topic"], "/wsx/news", "{got}");
        assert_eq!(
            serde_json::from_str::<Value>(m["data"].as_str().unwrap()).unwrap(),
            json!({"n": n})
        );
        let p = next(&mut z).await;
        assert_eq!(p["meta"]["msg_type"], "zwsx.psrq", "{p}");
        assert_eq!(p["meta"]["id"], id.as_str(), "{p}");
        assert_eq!(p["data"]["pub_msg_id"], id.as_str(), "{p}");
        assert_eq!(p["data"]["topic_name"], "/wsx/news", "{p}");
        assert_eq!(p["data"]["sub_key"], zato_key.as_str(), "{p}");
    }
    // A WebSocket client's subscription is not config: not exported, and an import with
    // replace leaves it alone; one in a document is refused.
    let export = oxbus_integration::api::admin(&srv, "GET", "/v1/config", Value::Null)
        .await
        .json();
    assert!(!export.to_string().contains(&sub_key), "{export}");
    let r =
        oxbus_integration::api::admin(&srv, "POST", "/v1/config?replace=1", export.clone()).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = srv
        .admin(
            "GET",
            &format!("/v1/pubsub/subs/{sub_key}"),
            Some(&token),
            b"",
        )
        .await;
    assert_eq!(
        r.status,
        200,
        "kept by the import: {}",
        String::from_utf8_lossy(&r.body)
    );
    let mut doc = export;
    doc["pubsub_subscription"] = json!([{"sub_key": "sk.wsx-imported", "topic": "/wsx/news",
        "delivery": {"type": "websocket", "client_id": "ws.x.0123456789abcdef"}}]);
    let r = oxbus_integration::api::admin(&srv, "POST", "/v1/config", doc).await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains("not imported"));
    // The subscriber goes: its subscription goes with it; the other stays.
    drop(sub);
    wait_until_unsubscribed(&srv, &sub_key).await;
    let r = srv
        .admin(
            "GET",
            &format!("/v1/pubsub/subs/{zato_key}"),
            Some(&token),
            b"",
        )
        .await;
    assert_eq!(r.status, 200);
    // A subscription for a client that is gone (made by the admin API for an id no one
    // holds) is dropped at its first delivery.
    let me = ask(&mut publisher, json!({"cmd": "whoami"})).await["client"]
        .as_str()
        .unwrap()
        .to_owned();
    let server = me
        .strip_prefix("ws.")
        .unwrap()
        .rsplit_once('.')
        .unwrap()
        .0
        .to_owned();
    let r = srv
        .admin(
            "PUT",
            "/v1/pubsub/subs/sk.wsx-ghost",
            Some(&token),
            json!({"topic": "/wsx/news", "delivery": {"type": "websocket",
                   "client_id": format!("ws.{server}.0123456789abcdef")}})
            .to_string()
            .as_bytes(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let r = ask(
        &mut publisher,
        json!({"cmd": "publish", "topic": "/wsx/news", "data": {"n": 3}}),
    )
    .await;
    assert!(r["msg_id"].is_string(), "{r}");
    wait_until_unsubscribed(&srv, "sk.wsx-ghost").await;
    assert_eq!(next(&mut z).await["data"]["data"], r#"{"n":3}"#);
    // A malformed client id is refused.
    let r = srv
        .admin(
            "PUT",
            "/v1/pubsub/subs/sk.wsx-bad",
            Some(&token),
            json!({"topic": "/wsx/news", "delivery": {"type": "websocket", "client_id": "nope"}})
                .to_string()
                .as_bytes(),
        )
        .await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    // An import with replace that deletes the topic takes the Zato client's subscription
    // with it (the only one left on /wsx/news).
    let mut doc = oxbus_integration::api::admin(&srv, "GET", "/v1/config", Value::Null)
        .await
        .json();
    doc["pubsub_topic"] = json!([{"name": "/other"}]);
    let r = oxbus_integration::api::admin(&srv, "POST", "/v1/config?replace=1", doc).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        String::from_utf8_lossy(&r.body).contains(&zato_key),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let r = srv
        .admin(
            "GET",
            &format!("/v1/pubsub/subs/{zato_key}"),
            Some(&token),
            b"",
        )
        .await;
    assert_eq!(r.status, 404, "{}", String::from_utf8_lossy(&r.body));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn clients_connect_through_oxbus_proxy() {
    let dir = marks_dir();
    let srv = env(&dir).start().await;
    let p = oxbus_integration::proxy::Proxy::start(
        "upstream_read_timeout_ms = 500\nkeepalive_timeout_ms = 500\nthreads = 2",
        &format!(
            "[upstreams]\nservers = [\"127.0.0.1:{}\"]\n[health]\ninterval_ms = 100\ntimeout_ms = 500\n",
            srv.port()
        ),
    );
    let url = format!("ws://127.0.0.1:{}/ws/echo/p", p.port);
    let mut ws = eventually(
        Duration::from_secs(20),
        "a client through the proxy",
        || {
            let url = url.clone();
            async move {
                let tcp = TcpStream::connect(("127.0.0.1", p.port)).await.ok()?;
                client_async(url.into_client_request().ok()?, tcp)
                    .await
                    .ok()
                    .map(|(ws, _)| ws)
            }
        },
    )
    .await;
    let me = ask(&mut ws, json!({"cmd": "whoami"})).await;
    assert_eq!(me["type"], "websocket", "{me}");
    // Longer than the proxy's read and keep-alive timeouts: the tunnel has its own.
    for i in 0..4 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(ask(&mut ws, json!(i)).await, json!({"echo": i}));
    }
    // Over the channel's limit: the server's 1009 comes back through the tunnel.
    let _ = ws.send(Message::binary(vec![7u8; 100_000])).await;
    assert_eq!(closed(&mut ws, Duration::from_secs(10)).await, Some(1009));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sends `bytes` on a new connection and returns all the server answers until it closes
/// (within 5 s).
async fn sent_raw(srv: &Server, bytes: &[u8]) -> String {
    let mut raw = TcpStream::connect(("127.0.0.1", srv.port())).await.unwrap();
    raw.write_all(bytes).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut got))
        .await
        .expect("the server closes")
        .unwrap();
    String::from_utf8_lossy(&got).into_owned()
}

/// A client frame: FIN bit, opcode, masked with a fixed key (as RFC 6455 requires of a
/// client) unless `masked` is false.
fn frame(fin: bool, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => f.push(mask_bit | n as u8),
        n if n < 65536 => {
            f.push(mask_bit | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(mask_bit | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let key = [0x37u8, 0xfa, 0x21, 0x3d];
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        f.extend_from_slice(payload);
    }
    f
}

/// A raw connection after a successful handshake on `path`.
async fn raw_ws(srv: &Server, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", srv.port())).await.unwrap();
    s.write_all(
        format!(
            "GET {path} HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
             sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

/// Reads one server frame (servers do not mask): (fin, opcode, payload).
async fn read_frame(s: &mut TcpStream) -> (bool, u8, Vec<u8>) {
    let mut h = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut h))
        .await
        .expect("a frame within 10 s")
        .expect("a frame");
    assert_eq!(h[1] & 0x80, 0, "a server frame is not masked");
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).await.unwrap();
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).await.unwrap();
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut p = vec![0u8; len];
    s.read_exact(&mut p).await.unwrap();
    (h[0] & 0x80 != 0, h[0] & 0x0f, p)
}

/// The next data or close frame, answering nothing (pings are skipped).
async fn read_data(s: &mut TcpStream) -> (u8, Vec<u8>) {
    loop {
        let (_, op, p) = read_frame(s).await;
        if op != 0x9 {
            return (op, p);
        }
    }
}

/// Opens `path` (raw), sends `bytes`, and returns the code of the close frame the server
/// answers with.
async fn closes_with(srv: &Server, path: &str, bytes: &[u8]) -> u16 {
    let mut s = raw_ws(srv, path).await;
    s.write_all(bytes).await.unwrap();
    let (op, p) = read_data(&mut s).await;
    assert_eq!(op, 0x8, "a close frame, not {p:?}");
    close_code(&p)
}

fn close_code(p: &[u8]) -> u16 {
    u16::from_be_bytes([p[0], p[1]])
}

#[tokio::test]
async fn conformance_fragments_control_frames_utf8_and_close_codes() {
    let dir = marks_dir();
    let srv = env(&dir).start().await;

    // A text message in three fragments, a ping between two of them: the pong comes at once
    // (with the ping's payload), the message is answered whole.
    let mut s = raw_ws(&srv, "/ws/echo/f").await;
    let mut bytes = frame(false, 0x1, b"{\"frag", true);
    bytes.extend(frame(false, 0x0, b"mented\": ", true));
    bytes.extend(frame(true, 0x9, b"mid", true));
    bytes.extend(frame(true, 0x0, b"[1, 2]}", true));
    s.write_all(&bytes).await.unwrap();
    let (fin, op, p) = read_frame(&mut s).await;
    assert_eq!(
        (fin, op, p.as_slice()),
        (true, 0xA, &b"mid"[..]),
        "the pong first"
    );
    let (op, p) = read_data(&mut s).await;
    assert_eq!(op, 0x1);
    assert_eq!(
        serde_json::from_slice::<Value>(&p).unwrap(),
        json!({"echo": {"fragmented": [1, 2]}})
    );
    // A binary message in two fragments; a text frame in the middle of it is a protocol
    // error (1002).
    s.write_all(
        &[
            frame(false, 0x2, b"\x01\x02", true),
            frame(true, 0x0, b"\x03", true),
        ]
        .concat(),
    )
    .await
    .unwrap();
    assert_eq!(read_data(&mut s).await, (0x2, vec![3, 2, 1]));
    s.write_all(
        &[
            frame(false, 0x2, b"\x01", true),
            frame(true, 0x1, b"x", true),
        ]
        .concat(),
    )
    .await
    .unwrap();
    let (op, p) = read_data(&mut s).await;
    assert_eq!((op, close_code(&p)), (0x8, 1002));

    // Invalid UTF-8 in a text message: 1007, also when the bad sequence spans fragments.
    assert_eq!(
        closes_with(&srv, "/ws/echo/u", &frame(true, 0x1, b"ok \xff\xfe", true)).await,
        1007
    );
    assert_eq!(
        closes_with(
            &srv,
            "/ws/echo/u",
            &[
                frame(false, 0x1, b"\xe2\x82", true),
                frame(true, 0x0, b"\x28", true),
            ]
            .concat(),
        )
        .await,
        1007
    );

    // An unmasked client frame: 1002. A control frame over 125 bytes: 1002.
    assert_eq!(
        closes_with(&srv, "/ws/echo/m", &frame(true, 0x1, b"\"x\"", false)).await,
        1002
    );
    assert_eq!(
        closes_with(&srv, "/ws/echo/m", &frame(true, 0x9, &[b'p'; 126], true)).await,
        1002
    );
    // A reserved opcode: 1002.
    assert_eq!(
        closes_with(&srv, "/ws/echo/m", &frame(true, 0x3, b"", true)).await,
        1002
    );

    // Reserved bits without an extension that defines them (Autobahn 3.x): 1002.
    for rsv in [0x40u8, 0x20, 0x10] {
        let mut f = frame(true, 0x1, b"\"x\"", true);
        f[0] |= rsv;
        assert_eq!(
            closes_with(&srv, "/ws/echo/m", &f).await,
            1002,
            "rsv {rsv:#x}"
        );
    }
    // A continuation with no message begun, a fragmented ping (5.x): 1002.
    assert_eq!(
        closes_with(&srv, "/ws/echo/m", &frame(true, 0x0, b"x", true)).await,
        1002
    );
    assert_eq!(
        closes_with(&srv, "/ws/echo/m", &frame(false, 0x9, b"p", true)).await,
        1002
    );
    // Close frames (7.x): a 1-byte payload, codes no endpoint may send (999, 1004, 1005,
    // 1006, 1015, 5000): 1002; a reason that is not UTF-8: 1007.
    assert_eq!(
        closes_with(&srv, "/ws/echo/m", &frame(true, 0x8, &[0x03], true)).await,
        1002
    );
    for code in [999u16, 1004, 1005, 1006, 1015, 5000] {
        assert_eq!(
            closes_with(
                &srv,
                "/ws/echo/m",
                &frame(true, 0x8, &code.to_be_bytes(), true)
            )
            .await,
            1002,
            "close code {code}"
        );
    }
    let mut bad_reason = 1000u16.to_be_bytes().to_vec();
    bad_reason.extend_from_slice(&[
        0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xce, 0xbc, 0xce, 0xb5, 0xed, 0xa0, 0x80,
    ]);
    assert_eq!(
        closes_with(&srv, "/ws/echo/m", &frame(true, 0x8, &bad_reason, true)).await,
        1007
    );
    // Codes an application may send (1000-1003, 1007-1011, 3000-4999) are taken.
    for code in [1001u16, 1011, 1012, 1013, 3000, 4999] {
        let mut s = raw_ws(&srv, "/ws/echo/c").await;
        s.write_all(&frame(true, 0x8, &code.to_be_bytes(), true))
            .await
            .unwrap();
        let (op, p) = read_data(&mut s).await;
        assert_eq!(op, 0x8, "close code {code}");
        // The close handshake echoes the client's code (what tungstenite does; RFC 6455
        // says an endpoint typically does).
        assert_eq!(close_code(&p), code, "answered {p:?}");
    }

    // The client closes with 1000 and a reason: the server answers its close (1000), then
    // ends the connection.
    let mut s = raw_ws(&srv, "/ws/echo/c").await;
    let mut close = 1000u16.to_be_bytes().to_vec();
    close.extend_from_slice(b"bye");
    s.write_all(&frame(true, 0x8, &close, true)).await.unwrap();
    let (op, p) = read_data(&mut s).await;
    assert_eq!((op, close_code(&p)), (0x8, 1000));
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .expect("the server ends the connection after the close handshake")
        .unwrap();
    // The server still serves others.
    let mut ws = connect(&srv, "/ws/echo/after").await;
    assert_eq!(ask(&mut ws, json!(5)).await, json!({"echo": 5}));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sends one message from every client and checks each got its own answer.
async fn all_answer(clients: &mut [Ws], round: u32) {
    for (i, ws) in clients.iter_mut().enumerate() {
        ws.send(Message::text(json!({"r": round, "i": i}).to_string()))
            .await
            .unwrap();
    }
    for (i, ws) in clients.iter_mut().enumerate() {
        loop {
            let v = next(ws).await;
            if v == json!({"echo": {"r": round, "i": i}}) {
                break;
            }
            // A call in flight on a worker that was killed is answered with an error;
            // then the message is sent again.
            assert!(v["error"].is_string(), "client {i} round {round}: {v}");
            ws.send(Message::text(json!({"r": round, "i": i}).to_string()))
                .await
                .unwrap();
        }
    }
}

#[tokio::test]
async fn a_thousand_clients_stay_connected_through_deploys_kills_and_restarts() {
    let dir = marks_dir();
    let srv = env(&dir).start().await;
    let mut clients = Vec::new();
    for _ in 0..1000 {
        clients.push(connect(&srv, "/ws/slow").await);
    }
    all_answer(&mut clients, 0).await;

    // A hot deploy of another module.
    let token = srv.admin_token();
    let body = json!({"modules": [{"name": "extra", "source": "from oxbus import Service\n\nclass X(Service):\n    name = 'extra.x'\n\n    def handle(self):\n        pass\n"}], "deployed_by": "it"});
    let r = srv
        .admin(
            "POST",
            "/v1/modules",
            Some(&token),
            body.to_string().as_bytes(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    all_answer(&mut clients, 1).await;

    // A worker killed with SIGKILL (the supervisor starts another).
    let pids = srv.worker_pids();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pids[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    all_answer(&mut clients, 2).await;
    // Its replacement is there before the restart (else the restart's "before" would
    // miss it, and the count of workers afterwards would not match).
    let killed = pids[0];
    eventually(
        Duration::from_secs(30),
        "the killed worker replaced",
        || {
            let srv = &srv;
            async move {
                let now = srv.worker_pids();
                (now.len() == 2 && !now.contains(&killed)).then_some(())
            }
        },
    )
    .await;

    // A rolling restart of every worker.
    let before = srv.worker_pids();
    srv.signal(nix::sys::signal::Signal::SIGHUP);
    eventually(Duration::from_secs(60), "every worker replaced", || {
        let before = before.clone();
        let srv = &srv;
        async move {
            let now = srv.worker_pids();
            (now.len() == 2 && now.iter().all(|p| !before.contains(p))).then_some(())
        }
    })
    .await;
    all_answer(&mut clients, 3).await;
    // A worker that crashes under a client's call: that call is answered with an error.
    let mut w = connect(&srv, "/ws/echo/k").await;
    let e = ask(&mut w, json!({"cmd": "crash"})).await;
    assert!(e["error"].is_string(), "{e}");
    all_answer(&mut clients, 4).await;
    for ws in &mut clients {
        ws.close(None).await.unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
