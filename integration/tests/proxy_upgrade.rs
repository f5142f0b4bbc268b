//! `oxbus proxy` carrying HTTP/1.1 upgrades (WebSocket) to a scripted server: the upgrade
//! head reaches the server with `Upgrade: websocket` and `Connection: upgrade`, its `101`
//! reaches the client (with `Connection: upgrade` and no other hop-by-hop header), and
//! bytes then go both ways (those the client sent behind its head first); the tunnel has
//! its own idle timeout instead of the request timeouts; a close or an end on either side
//! reaches the other; a refused upgrade, a `101` that is not the switch asked for, and an
//! error answer of the proxy's own (502, 503) close the client connection and never read
//! what followed the head as a request; upgrades the proxy does not carry (HTTP/1.0, with
//! a body, to another protocol than websocket) are plain requests; tunnels run through a
//! graceful upgrade until its grace period ends; TLS clients too. Clients write raw bytes,
//! so what is tested is exactly what goes over the wire.

use oxbus_integration::eventually;
use oxbus_integration::proxy::{Proxy, free_port, get, old_exits_cleanly};
use oxbus_integration::raw::{Answer, closed, fill, header_of, read_answer, read_head};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A WebSocket opening handshake (RFC 6455 §1.3), the sample key.
const WS_HEAD: &str = "GET /ws HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\n\
    connection: keep-alive, Upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    sec-websocket-version: 13\r\n\r\n";

/// What the scripted server writes right behind its 101, before any byte of the client's.
const GREETING: &[u8] = b"hello from the server;";

/// What the scripted server writes after the client's end reached it, before its own end.
const AFTER_END: &[u8] = b"after your end";

/// The scripted server's server-sent ticks (on "tick"): this many, this far apart.
const TICKS: usize = 5;
const TICK_EVERY: Duration = Duration::from_millis(700);

/// A request as the scripted server received it, and on which of its connections.
#[derive(Debug, Clone)]
struct Seen {
    conn: u64,
    head: String,
}

impl Seen {
    fn path(&self) -> &str {
        self.head.split(' ').nth(1).unwrap_or_default()
    }

    fn header(&self, name: &str) -> Vec<String> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .collect()
    }
}

/// What the scripted server saw: requests, and what happened to its connections
/// (`eof <conn>`: the proxy ended it; `closed <conn>`: the server closed it; `reset <conn>`).
#[derive(Default)]
struct Script {
    seen: Mutex<Vec<Seen>>,
    events: Mutex<Vec<String>>,
}

impl Script {
    fn event(&self, e: String) {
        self.events.lock().unwrap().push(e);
    }

    fn has_event(&self, e: &str) -> bool {
        self.events.lock().unwrap().iter().any(|x| x == e)
    }

    fn requests_to(&self, path: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path() == path)
            .cloned()
            .collect()
    }

    /// Waits (10 s at most) for the event `e`.
    async fn wait_event(&self, e: &str) {
        eventually(Duration::from_secs(10), e, || async {
            self.has_event(e).then_some(())
        })
        .await;
    }
}

/// The scripted server: HTTP/1.1 keep-alive, answering by path (see [`serve`]).
async fn scripted_server() -> (u16, Arc<Script>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let script = Arc::new(Script::default());
    let s2 = script.clone();
    tokio::spawn(async move {
        let next = AtomicU64::new(1);
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            s.set_nodelay(true).unwrap();
            tokio::spawn(serve(s, next.fetch_add(1, Ordering::Relaxed), s2.clone()));
        }
    });
    (port, script)
}

/// One server connection. `/ws` with an `Upgrade` header switches (101 with hop-by-hop
/// headers of its own, [`GREETING`] in the same write) and then echoes ([`echo`]); `/ws`
/// without one is answered 426; `/ws-refuse` is answered 403 whatever it asks, and the
/// connection stays open for more requests; `/ws-drop` closes the connection without an
/// answer; `/ws-h2c`, `/ws-http10` and `/ws-noconn` answer an upgrade with a 101 that is
/// not the switch asked for (to h2c; as HTTP/1.0; without `Connection: upgrade`) and then
/// echo; `/echo` echoes a body; `/readyz` is 200.
async fn serve(mut s: TcpStream, conn: u64, script: Arc<Script>) {
    let mut buf = Vec::new();
    loop {
        let Some(n) = read_head(&mut s, &mut buf).await else {
            script.event(format!("eof {conn}"));
            return;
        };
        let head = String::from_utf8_lossy(&buf[..n]).to_string();
        buf.drain(..n);
        let seen = Seen {
            conn,
            head: head.clone(),
        };
        let body = match header_of(&head, "content-length") {
            Some(len) => {
                let len: usize = len.parse().unwrap();
                if fill(&mut s, &mut buf, len).await.is_none() {
                    return;
                }
                buf.drain(..len).collect()
            }
            None => Vec::new(),
        };
        let upgrade = !seen.header("upgrade").is_empty();
        let path = seen.path().to_string();
        script.seen.lock().unwrap().push(seen);
        let ok = match path.as_str() {
            "/ws" if upgrade => {
                let mut out = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                    Connection: Upgrade, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n\
                    Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
                    .to_vec();
                out.extend_from_slice(GREETING);
                if s.write_all(&out).await.is_err() {
                    return;
                }
                return echo(s, buf, conn, script).await;
            }
            "/ws-h2c" | "/ws-http10" | "/ws-noconn" if upgrade => {
                let head: &[u8] = match path.as_str() {
                    "/ws-h2c" => b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
                    "/ws-http10" => b"HTTP/1.0 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
                    _ => b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
                };
                if s.write_all(&[head, GREETING].concat()).await.is_err() {
                    return;
                }
                return echo(s, buf, conn, script).await;
            }
            "/ws-drop" => {
                script.event(format!("closed {conn}"));
                return;
            }
            "/ws" => {
                s.write_all(
                    b"HTTP/1.1 426 Upgrade Required\r\nupgrade: websocket\r\ncontent-length: 16\r\n\r\nupgrade required",
                )
                .await
            }
            "/ws-refuse" => {
                s.write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 15\r\n\r\nno upgrade here")
                    .await
            }
            "/echo" => {
                let mut out =
                    format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes();
                out.extend_from_slice(&body);
                s.write_all(&out).await
            }
            "/readyz" => {
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await
            }
            _ => {
                s.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                    .await
            }
        };
        if ok.is_err() {
            return;
        }
    }
}

/// The switched connection: echoes what comes (starting with `buf`, read behind the head);
/// "bye" makes it answer "bye!" and close; "tick" makes it send [`TICKS`] ticks of its own,
/// [`TICK_EVERY`] apart; the client's end makes it send [`AFTER_END`], then end too.
async fn echo(mut s: TcpStream, mut buf: Vec<u8>, conn: u64, script: Arc<Script>) {
    loop {
        if !buf.is_empty() {
            let data = std::mem::take(&mut buf);
            if data.windows(3).any(|w| w == b"bye") {
                let _ = s.write_all(b"bye!").await;
                script.event(format!("closed {conn}"));
                return;
            }
            if data.starts_with(b"tick") {
                for i in 0..TICKS {
                    tokio::time::sleep(TICK_EVERY).await;
                    if s.write_all(format!("tick{i};").as_bytes()).await.is_err() {
                        script.event(format!("reset {conn}"));
                        return;
                    }
                }
                continue;
            }
            if s.write_all(&data).await.is_err() {
                script.event(format!("reset {conn}"));
                return;
            }
        }
        buf.reserve(65536);
        match s.read_buf(&mut buf).await {
            Ok(0) => {
                script.event(format!("eof {conn}"));
                let _ = s.write_all(AFTER_END).await;
                return;
            }
            Ok(_) => {}
            Err(_) => {
                script.event(format!("reset {conn}"));
                return;
            }
        }
    }
}

/// A proxy (`keys` in its `[proxy]` section, `rest` after its upstreams) in front of the
/// scripted server, once a request through it is answered.
async fn proxy_in_front(port: u16, keys: &str, rest: &str) -> Proxy {
    let p = Proxy::start(
        keys,
        &format!(
            "[upstreams]\nservers = [\"127.0.0.1:{port}\"]\n[health]\ninterval_ms = 100\ntimeout_ms = 500\n{rest}"
        ),
    );
    eventually(
        Duration::from_secs(20),
        "the proxy reaches the scripted server",
        || async {
            let mut s = TcpStream::connect(("127.0.0.1", p.port)).await.ok()?;
            s.write_all(b"GET /readyz HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .ok()?;
            let a =
                tokio::time::timeout(Duration::from_secs(5), read_answer(&mut s, &mut Vec::new()))
                    .await
                    .ok()??;
            (a.status == 200).then_some(())
        },
    )
    .await;
    p
}

/// Reads one answer (10 s at most).
async fn answer<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> Answer {
    tokio::time::timeout(Duration::from_secs(10), read_answer(s, buf))
        .await
        .expect("no answer within 10 s")
        .expect("closed without an answer")
}

/// Reads exactly `n` more bytes (10 s at most).
async fn read_n<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>, n: usize) -> Vec<u8> {
    tokio::time::timeout(Duration::from_secs(10), fill(s, buf, n))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{n} bytes did not come; got {:?}",
                String::from_utf8_lossy(buf)
            )
        })
        .unwrap_or_else(|| {
            panic!(
                "closed before {n} bytes; got {:?}",
                String::from_utf8_lossy(buf)
            )
        });
    buf.drain(..n).collect()
}

/// Reads to the end of `s` (10 s at most).
async fn read_rest<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> Vec<u8> {
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(buf))
        .await
        .expect("no end within 10 s")
        .expect("read to the end");
    std::mem::take(buf)
}

/// Sends an upgrade head with `early` bytes behind it in one write and reads the 101's
/// head, which it returns; what came behind the head is left in `buf`.
async fn switch<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    early: &[u8],
    buf: &mut Vec<u8>,
) -> String {
    let mut first = WS_HEAD.as_bytes().to_vec();
    first.extend_from_slice(early);
    s.write_all(&first).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(10), read_head(s, buf))
        .await
        .expect("no answer head")
        .expect("closed without an answer");
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    buf.drain(..n);
    assert!(
        head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{head}"
    );
    head
}

/// Writes `msg` and reads its echo.
async fn ping<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, buf: &mut Vec<u8>, msg: &str) {
    s.write_all(msg.as_bytes()).await.unwrap();
    assert_eq!(read_n(s, buf, msg.len()).await, msg.as_bytes());
}

fn no_errors(p: &Proxy, allowed: &[&str]) {
    let errors = p.unexpected_errors(allowed);
    assert!(errors.is_empty(), "{errors:?}");
}

#[tokio::test]
async fn an_upgrade_reaches_the_server_and_bytes_then_go_both_ways() {
    let (port, script) = scripted_server().await;
    let p = proxy_in_front(port, "", "").await;
    let mut s = TcpStream::connect(("127.0.0.1", p.port)).await.unwrap();
    s.set_nodelay(true).unwrap();
    let mut buf = Vec::new();

    // The head and the first bytes of the new protocol in one write.
    let head = switch(&mut s, b"early bytes|", &mut buf).await;
    assert_eq!(
        header_of(&head, "upgrade").as_deref(),
        Some("websocket"),
        "{head}"
    );
    // The switch as the proxy writes it: the server's own hop-by-hop headers dropped.
    assert_eq!(
        header_of(&head, "connection").as_deref(),
        Some("upgrade"),
        "{head}"
    );
    for hop in ["x-hop", "keep-alive"] {
        assert_eq!(header_of(&head, hop), None, "{head}");
    }
    assert_eq!(
        header_of(&head, "sec-websocket-accept").as_deref(),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    let id = header_of(&head, "x-request-id").expect("a request id on the 101");
    // What the server sent behind its 101, then the echo of the client's early bytes.
    let want = [GREETING, b"early bytes|"].concat();
    assert_eq!(read_n(&mut s, &mut buf, want.len()).await, want);

    let seen = script.requests_to("/ws");
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].header("upgrade"), ["websocket"], "{}", seen[0].head);
    assert_eq!(
        seen[0].header("connection"),
        ["upgrade"],
        "{}",
        seen[0].head
    );
    assert_eq!(
        seen[0].header("sec-websocket-key"),
        ["dGhlIHNhbXBsZSBub25jZQ=="]
    );
    assert_eq!(seen[0].header("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(seen[0].header("x-request-id"), [id]);

    // Round trips, then 1 MiB each way at once.
    for i in 0..5 {
        ping(&mut s, &mut buf, &format!("message {i};")).await;
    }
    let big: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = s.into_split();
    let up = big.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&up).await.unwrap();
        w
    });
    assert!(
        read_n(&mut r, &mut buf, big.len()).await == big,
        "the echoed 1 MiB differ"
    );
    let mut w = writer.await.unwrap();

    // Counted while open.
    let stats = p.stats().await;
    assert_eq!(stats["tunnels_open"], 1, "{stats}");
    assert_eq!(p.upstream(port).await["tunnels"], 1);
    let (status, metrics) = get(p.stats_port, "/metrics").await.unwrap();
    let metrics = String::from_utf8_lossy(&metrics);
    assert_eq!(status, 200);
    assert!(
        metrics.contains("\noxbus_proxy_tunnels_open 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "oxbus_proxy_upstream_tunnels_total{{upstream=\"127.0.0.1:{port}\"}} 1"
        )),
        "{metrics}"
    );

    // The client's end reaches the server, which still answers, then ends too.
    w.shutdown().await.unwrap();
    let conn = script.requests_to("/ws")[0].conn;
    script.wait_event(&format!("eof {conn}")).await;
    let mut s = r.reunite(w).unwrap();
    assert_eq!(read_rest(&mut s, &mut buf).await, AFTER_END);
    eventually(
        Duration::from_secs(10),
        "the tunnel is counted closed",
        || async { (p.stats().await["tunnels_open"] == 0).then_some(()) },
    )
    .await;
    no_errors(&p, &[]);
}

#[tokio::test]
async fn a_close_on_either_side_closes_the_other() {
    let (port, script) = scripted_server().await;
    let p = proxy_in_front(port, "", "").await;

    // The server closes: the client's connection ends after the server's last bytes.
    let mut s = TcpStream::connect(("127.0.0.1", p.port)).await.unwrap();
    let mut buf = Vec::new();
    switch(&mut s, b"", &mut buf).await;
    assert_eq!(read_n(&mut s, &mut buf, GREETING.len()).await, GREETING);
    ping(&mut s, &mut buf, "one;").await;
    s.write_all(b"bye").await.unwrap();
    assert_eq!(read_rest(&mut s, &mut buf).await, b"bye!");
    // The end reached the client as its peer's end; its own end closes the tunnel.
    drop(s);

    // The client goes away: the server's connection ends.
    let mut s = TcpStream::connect(("127.0.0.1", p.port)).await.unwrap();
    let mut buf = Vec::new();
    switch(&mut s, b"", &mut buf).await;
    assert_eq!(read_n(&mut s, &mut buf, GREETING.len()).await, GREETING);
    ping(&mut s, &mut buf, "two;").await;
    drop(s);
    let conn = script.requests_to("/ws")[1].conn;
    script.wait_event(&format!("eof {conn}")).await;
    eventually(
        Duration::from_secs(10),
        "both tunnels are counted closed",
        || async { (p.stats().await["tunnels_open"] == 0).then_some(()) },
    )
    .await;
    assert_eq!(p.upstream(port).await["tunnels"], 2);
    no_errors(&p, &[]);
}

#[tokio::test]
async fn a_busy_tunnel_outlives_the_request_timeouts_and_an_idle_one_is_closed() {
    let (port, script) = scripted_server().await;
    // Every timeout of a request far below the gaps between the tunnel's bytes, which stay
    // below its own idle timeout.
    let p = proxy_in_front(
        port,
        "keepalive_timeout_ms = 300\nupstream_read_timeout_ms = 300\nheader_read_timeout_ms = 300\ntunnel_idle_timeout_ms = 1500",
        "",
    )
    .await;
    let mut s = TcpStream::connect(("127.0.0.1", p.port)).await.unwrap();
    let mut buf = Vec::new();
    switch(&mut s, b"", &mut buf).await;
    assert_eq!(read_n(&mut s, &mut buf, GREETING.len()).await, GREETING);
    let opened = Instant::now();

    // The client speaks every 700 ms for 3.5 s.
    for i in 0..5 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        ping(&mut s, &mut buf, &format!("ping {i};")).await;
    }
    // Then only the server does, for 3.5 s more: bytes either way keep the tunnel open.
    s.write_all(b"tick").await.unwrap();
    for i in 0..TICKS {
        let tick = format!("tick{i};");
        assert_eq!(read_n(&mut s, &mut buf, tick.len()).await, tick.as_bytes());
    }
    assert!(opened.elapsed() > Duration::from_secs(6));

    // Then nothing: closed after the idle timeout (not before the request timeouts would
    // have cut it), both sides.
    let quiet = Instant::now();
    assert!(
        closed(&mut s).await,
        "the idle tunnel was not closed within 10 s"
    );
    let after = quiet.elapsed();
    assert!(
        after >= Duration::from_millis(1000),
        "closed {after:?} after the last byte; the idle timeout is 1500 ms"
    );
    let conn = script.requests_to("/ws")[0].conn;
    script.wait_event(&format!("eof {conn}")).await;
    no_errors(&p, &[]);
}

#[tokio::test]
async fn a_refused_upgrade_closes_the_client_connection_after_the_answer() {
    let (port, script) = scripted_server().await;
    // One thread: a server connection put back in the pool would serve the next request.
    let p = proxy_in_front(port, "threads = 1", "").await;
    let mut s = TcpStream::connect(("127.0.0.1", p.port)).await.unwrap();
    // Behind the head, bytes that would be a request if read as HTTP.
    let smuggled = "GET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n";
    s.write_all(format!("{}{smuggled}", WS_HEAD.replace("/ws ", "/ws-refuse ")).as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let a = answer(&mut s, &mut buf).await;
    assert_eq!(
        (a.status, a.body.as_slice()),
        (403, &b"no upgrade here"[..])
    );
    assert_eq!(
        a.header("connection").as_deref(),
        Some("close"),
        "{}",
        a.head
    );
    assert!(closed(&mut s).await, "the client connection stays open");

    let refused = script.requests_to("/ws-refuse");
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].header("upgrade"), ["websocket"]);
    // That server connection is not pooled: the next request goes on another (on one
    // proxy thread, a pooled one would be taken, being the only one idle), and the proxy
    // ends it.
    let mut s = TcpStream::connect(("127.0.0.1", p.port)).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nok")
        .await
        .unwrap();
    let a = answer(&mut s, &mut Vec::new()).await;
    assert_eq!((a.status, a.body.as_slice()), (200, &b"ok"[..]));
    let echo = script.requests_to("/echo");
    assert_ne!(echo.last().unwrap().conn, refused[0].conn);
    script.wait_event(&format!("eof {}", refused[0].conn)).await;
    assert!(
        script.requests_to("/smuggled").is_empty(),
        "bytes behind a refused upgrade's head were read as a request"
    );
    assert_eq!(p.stats().await["tunnels_open"], 0);
    assert_eq!(p.upstream(port).await["tunnels"], 0);
    no_errors(&p, &[]);
}

/// Sends an upgrade head for `path` with a complete request to `/smuggled` pipelined right
/// behind it, in one write; returns the one answer, once the connection has closed after it.
async fn upgrade_with_a_request_behind(port: u16, path: &str) -> Answer {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let smuggled = "GET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n";
    s.write_all(format!("{}{smuggled}", WS_HEAD.replace("/ws ", &format!("{path} "))).as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let a = answer(&mut s, &mut buf).await;
    assert_eq!(
        a.header("connection").as_deref(),
        Some("close"),
        "{}",
        a.head
    );
    assert!(
        buf.is_empty(),
        "more behind the answer: {:?}",
        String::from_utf8_lossy(&buf)
    );
    assert!(
        closed(&mut s).await,
        "the client connection stays open after {} {}",
        a.status,
        a.head
    );
    a
}

#[tokio::test]
async fn an_error_answer_to_an_upgrade_closes_the_connection_unread() {
    // A server that closes without an answer: 502.
    let (port, script) = scripted_server().await;
    let p = proxy_in_front(port, "threads = 1", "").await;
    let errors = p.upstream(port).await["errors"].as_u64().unwrap();
    let a = upgrade_with_a_request_behind(p.port, "/ws-drop").await;
    assert_eq!(a.status, 502, "{}", a.head);
    assert!(!script.requests_to("/ws-drop").is_empty());
    assert!(
        script.requests_to("/smuggled").is_empty(),
        "bytes behind an upgrade's head were read as a request after a 502"
    );
    assert_eq!(p.upstream(port).await["errors"], errors + 1);
    assert_eq!(p.upstream(port).await["tunnels"], 0);
    no_errors(&p, &[]);
    drop(p);

    // No server up: 503 (a second 503, for the request behind, would mean it was read).
    let down = free_port();
    let p = Proxy::start(
        "",
        &format!(
            "[upstreams]\nservers = [\"127.0.0.1:{down}\"]\n[health]\ninterval_ms = 100\ntimeout_ms = 500\n"
        ),
    );
    eventually(
        Duration::from_secs(20),
        "the server is checked and down",
        || async {
            let u = p.upstream(down).await;
            (u["checks"].as_u64() > Some(0) && u["up"] == false).then_some(())
        },
    )
    .await;
    let a = upgrade_with_a_request_behind(p.port, "/ws").await;
    assert_eq!(a.status, 503, "{}", a.head);
    assert_eq!(a.json()["error"], "no server is up");
    assert_eq!(p.stats().await["no_upstream"], 1);
    no_errors(&p, &[]);
}

#[tokio::test]
async fn a_101_that_is_not_the_switch_asked_for_is_a_502() {
    let (port, script) = scripted_server().await;
    let p = proxy_in_front(port, "", "").await;
    let errors = p.upstream(port).await["errors"].as_u64().unwrap();
    let paths = ["/ws-h2c", "/ws-http10", "/ws-noconn"];
    for path in paths {
        let a = upgrade_with_a_request_behind(p.port, path).await;
        assert_eq!(a.status, 502, "{path}: {}", a.head);
        assert!(
            a.json()["error"]
                .as_str()
                .is_some_and(|e| e.contains("not the switch asked for")),
            "{path}: {}",
            a.json()
        );
        // The server connection is ended (it is no HTTP any more).
        let seen = script.requests_to(path);
        assert_eq!(seen.len(), 1, "{seen:?}");
        script.wait_event(&format!("eof {}", seen[0].conn)).await;
    }
    assert!(
        script.requests_to("/smuggled").is_empty(),
        "bytes behind an upgrade's head were read as a request after a 502"
    );
    let u = p.upstream(port).await;
    assert_eq!(u["errors"], errors + paths.len() as u64, "{u}");
    assert_eq!(u["tunnels"], 0, "{u}");
    assert_eq!(p.stats().await["tunnels_open"], 0);
    no_errors(&p, &[]);
}

#[tokio::test]
async fn plain_requests_and_upgrades_not_carried_are_served_as_before() {
    let (port, script) = scripted_server().await;
    let p = proxy_in_front(port, "", "").await;
    let mut s = TcpStream::connect(("127.0.0.1", p.port)).await.unwrap();
    let mut buf = Vec::new();
    // Plain requests one after the other on one connection.
    for body in ["one", "two"] {
        s.write_all(
            format!("POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\n{body}").as_bytes(),
        )
        .await
        .unwrap();
        let a = answer(&mut s, &mut buf).await;
        assert_eq!((a.status, a.body.as_slice()), (200, body.as_bytes()));
        assert_eq!(a.header("connection"), None, "{}", a.head);
    }
    // An upgrade request with a body is a plain request: no Upgrade reaches the server, and
    // the connection goes on.
    s.write_all(
        b"POST /ws HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\ncontent-length: 5\r\n\r\nhello",
    )
    .await
    .unwrap();
    let a = answer(&mut s, &mut buf).await;
    assert_eq!(a.status, 426, "{}", a.head);
    assert_eq!(a.header("connection"), None, "{}", a.head);
    s.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nthree")
        .await
        .unwrap();
    let a = answer(&mut s, &mut buf).await;
    assert_eq!((a.status, a.body.as_slice()), (200, &b"three"[..]));
    // An upgrade to another protocol than websocket (h2c, as `curl --http2` asks of an
    // http:// URL): a plain request, and the connection goes on.
    s.write_all(
        b"GET /ws HTTP/1.1\r\nhost: x\r\nconnection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    .await
    .unwrap();
    let a = answer(&mut s, &mut buf).await;
    assert_eq!(a.status, 426, "{}", a.head);
    assert_eq!(a.header("connection"), None, "{}", a.head);
    s.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\n\r\nfour")
        .await
        .unwrap();
    let a = answer(&mut s, &mut buf).await;
    assert_eq!((a.status, a.body.as_slice()), (200, &b"four"[..]));

    // From an HTTP/1.0 client: a plain request too, answered and closed.
    let mut s = TcpStream::connect(("127.0.0.1", p.port)).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.0\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n")
        .await
        .unwrap();
    let a = answer(&mut s, &mut Vec::new()).await;
    assert_eq!(a.status, 426, "{}", a.head);
    assert!(closed(&mut s).await);

    let ws = script.requests_to("/ws");
    assert_eq!(ws.len(), 3, "{ws:?}");
    for seen in ws {
        assert!(seen.header("upgrade").is_empty(), "{}", seen.head);
        assert!(seen.header("connection").is_empty(), "{}", seen.head);
        assert!(seen.header("http2-settings").is_empty(), "{}", seen.head);
    }
    assert_eq!(p.upstream(port).await["tunnels"], 0);
    no_errors(&p, &[]);
}

// Multi-threaded: the scripted server answers the new process's first checks while the test
// waits (blocking) for it to serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_runs_through_a_graceful_upgrade_until_the_grace_period_ends() {
    let (port, script) = scripted_server().await;
    let mut p = proxy_in_front(port, "grace_period_s = 2", "").await;
    let mut s = TcpStream::connect(("127.0.0.1", p.port)).await.unwrap();
    let mut buf = Vec::new();
    switch(&mut s, b"", &mut buf).await;
    assert_eq!(read_n(&mut s, &mut buf, GREETING.len()).await, GREETING);
    ping(&mut s, &mut buf, "before;").await;

    let mut old = p.upgrade();
    // The new process serves new tunnels.
    let mut s2 = TcpStream::connect(("127.0.0.1", p.port)).await.unwrap();
    let mut buf2 = Vec::new();
    switch(&mut s2, b"", &mut buf2).await;
    assert_eq!(read_n(&mut s2, &mut buf2, GREETING.len()).await, GREETING);
    ping(&mut s2, &mut buf2, "new;").await;
    // The old one's stays open through the hand-over, and into its grace period.
    ping(&mut s, &mut buf, "handing over;").await;
    eventually(
        Duration::from_secs(20),
        "the old process's grace period starts",
        || async { p.log().contains("grace period 2s starts").then_some(()) },
    )
    .await;
    ping(&mut s, &mut buf, "in the grace period;").await;
    // When the grace period is over, it is closed, and the old process exits.
    assert!(closed(&mut s).await, "the tunnel outlived the grace period");
    old_exits_cleanly(&mut old, "after its grace period").await;
    let conn = script.requests_to("/ws")[0].conn;
    script.wait_event(&format!("eof {conn}")).await;
    drop(s2);
    no_errors(&p, &["No incoming socket transfer"]);
}

#[tokio::test]
async fn an_upgrade_over_tls_goes_both_ways() {
    let (port, script) = scripted_server().await;
    let dir = std::env::temp_dir().join(format!(
        "oxbus-upgrade-tls-{}-{}",
        std::process::id(),
        oxbus_integration::next_id()
    ));
    let certs = oxbus_integration::upstream::make_certs(&dir);
    let tls_port = free_port();
    let p = proxy_in_front(
        port,
        "",
        &format!(
            "[tls]\nlisten = \"127.0.0.1:{tls_port}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            certs.cert.display(),
            certs.key.display()
        ),
    )
    .await;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(&certs.ca).unwrap(),
    )) {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(("127.0.0.1", tls_port)).await.unwrap();
    let sni = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut s = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(sni, tcp)
        .await
        .unwrap();
    let mut buf = Vec::new();
    switch(&mut s, b"early;", &mut buf).await;
    let want = [GREETING, b"early;"].concat();
    assert_eq!(read_n(&mut s, &mut buf, want.len()).await, want);
    let big: Vec<u8> = (0..(256u32 << 10)).map(|i| (i % 251) as u8).collect();
    s.write_all(&big).await.unwrap();
    assert!(read_n(&mut s, &mut buf, big.len()).await == big);
    let seen = script.requests_to("/ws");
    assert_eq!(seen[0].header("x-forwarded-proto"), ["https"]);
    assert_eq!(seen[0].header("upgrade"), ["websocket"]);
    // The client's end (close_notify) reaches the server; the server's reaches the client.
    s.shutdown().await.unwrap();
    script.wait_event(&format!("eof {}", seen[0].conn)).await;
    assert_eq!(read_rest(&mut s, &mut buf).await, AFTER_END);
    no_errors(&p, &[]);
    let _ = std::fs::remove_dir_all(&dir);
}
