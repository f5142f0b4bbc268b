//! `oxbus proxy`'s HTTP/1 data path against a scripted server: bodies in every framing
//! (chunked with trailers, long ones streamed both ways, until-close, HEAD, 204), pipelined
//! requests, `Expect: 100-continue`, an early answer to an unread body, HTTP/1.0 clients,
//! request-smuggling shapes refused before any byte reaches a server, malformed and late
//! answers. Clients here write raw bytes, so what is tested is exactly what goes over the wire.

use oxbus_integration::eventually;
use oxbus_integration::proxy::Proxy;
use oxbus_integration::raw::{fill, header_of, read_head};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A request as the scripted server received it.
#[derive(Debug, Clone)]
struct Seen {
    head: String,
    body: Vec<u8>,
}

impl Seen {
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

type Log = Arc<Mutex<Vec<Seen>>>;

/// Lets the scripted server's `/refuse-body` handler go (it holds its connection unread).
static REFUSED_READ: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Where the line starting at `at` ends (its CR), reading more as needed.
async fn line_end<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>, at: usize) -> Option<usize> {
    loop {
        if let Some(i) = buf[at..].windows(2).position(|w| w == b"\r\n") {
            return Some(at + i);
        }
        let upto = buf.len() + 1;
        fill(s, buf, upto).await?;
    }
}

/// Decodes a chunked body starting at `buf[0]`; returns (data, bytes used, trailer lines).
async fn read_chunked<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> Option<(Vec<u8>, usize, String)> {
    let mut at = 0;
    let mut data = Vec::new();
    loop {
        let end = line_end(s, buf, at).await?;
        let line = std::str::from_utf8(&buf[at..end]).ok()?;
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        at = end + 2;
        if size == 0 {
            // Trailers, up to the blank line.
            let mut trailers = String::new();
            loop {
                let end = line_end(s, buf, at).await?;
                if end == at {
                    return Some((data, end + 2, trailers));
                }
                trailers.push_str(std::str::from_utf8(&buf[at..end]).ok()?);
                trailers.push('\n');
                at = end + 2;
            }
        }
        fill(s, buf, at + size + 2).await?;
        data.extend_from_slice(&buf[at..at + size]);
        at += size + 2;
    }
}

/// The scripted server: answers by path (see the match below) and logs what it got.
async fn scripted_server() -> (u16, Log) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let log: Log = Arc::default();
    let log2 = log.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            s.set_nodelay(true).unwrap();
            tokio::spawn(serve(s, log2.clone()));
        }
    });
    (port, log)
}

async fn serve(mut s: TcpStream, log: Log) {
    let mut buf = Vec::new();
    while let Some(n) = read_head(&mut s, &mut buf).await {
        let head = String::from_utf8_lossy(&buf[..n]).to_string();
        buf.drain(..n);
        let line = head.lines().next().unwrap_or_default().to_string();
        let mut parts = line.split(' ');
        let method = parts.next().unwrap_or_default().to_string();
        let path = parts.next().unwrap_or_default().to_string();
        if path == "/refuse-body" {
            // Answers at once and stops reading, holding the connection until the test has
            // its answer.
            let _ = s
                .write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\nconnection: close\r\n\r\ntoo big\n")
                .await;
            REFUSED_READ.notified().await;
            return;
        }
        if header_of(&head, "expect").as_deref() == Some("100-continue") {
            let _ = s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
        }
        let body = if header_of(&head, "transfer-encoding").is_some() {
            let Some((data, used, trailers)) = read_chunked(&mut s, &mut buf).await else {
                return;
            };
            buf.drain(..used);
            let mut d = data;
            if !trailers.is_empty() {
                d.extend_from_slice(b"|trailers:");
                d.extend_from_slice(trailers.trim().as_bytes());
            }
            d
        } else if let Some(len) = header_of(&head, "content-length") {
            let len: usize = len.parse().unwrap();
            if fill(&mut s, &mut buf, len).await.is_none() {
                return;
            }
            buf.drain(..len).collect()
        } else {
            Vec::new()
        };
        log.lock().unwrap().push(Seen {
            head: head.clone(),
            body: body.clone(),
        });
        let ok = match path.as_str() {
            "/readyz" => {
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await
            }
            "/echo" => {
                let mut out = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\nconnection: keep-alive, x-hop\r\nx-hop: secret\r\nkeep-alive: timeout=5\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                out.extend_from_slice(&body);
                s.write_all(&out).await
            }
            "/chunked" => {
                let mut r = s
                    .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-trailer\r\n\r\n")
                    .await;
                for piece in [
                    "5\r\nhello\r\n",
                    "1;ext=1\r\n \r\n",
                    "5\r\nworld\r\n",
                    "0\r\nx-trailer: t\r\n\r\n",
                ] {
                    r = r.and(s.write_all(piece.as_bytes()).await);
                }
                r
            }
            "/until-close" => {
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nall ")
                    .await;
                let _ = s.write_all(b"of it").await;
                return;
            }
            "/big" => {
                let len = 4 << 20;
                let mut r = s
                    .write_all(
                        format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n").as_bytes(),
                    )
                    .await;
                let block: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
                for _ in 0..(len / block.len()) {
                    r = r.and(s.write_all(&block).await);
                }
                r
            }
            "/head" if method == "HEAD" => {
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")
                    .await
            }
            "/no-content" => s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await,
            "/status-99" => {
                s.write_all(b"HTTP/1.1 099 Odd\r\ncontent-length: 2\r\n\r\nhi")
                    .await
            }
            "/bad-length" => {
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 12x\r\n\r\n")
                    .await
            }
            "/stall" => {
                // Never answers: holds the connection until the proxy gives up on it.
                let _ = s.read(&mut [0u8; 1]).await;
                return;
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

/// An answer as the client read it.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    /// Decoded body (chunked: the data, then "|trailers:" and the trailer lines).
    body: Vec<u8>,
    /// The raw bytes of a chunked body.
    raw: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<String> {
        header_of(&self.head, name)
    }
}

/// Reads one answer from `s` (`head_only`: a HEAD request's, with no body).
async fn read_answer<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    head_only: bool,
) -> Option<Answer> {
    loop {
        let n = read_head(s, buf).await?;
        let head = String::from_utf8_lossy(&buf[..n]).to_string();
        buf.drain(..n);
        let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
        if (100..200).contains(&status) {
            continue;
        }
        let mut a = Answer {
            status,
            head,
            body: Vec::new(),
            raw: Vec::new(),
        };
        if head_only || status == 204 || status == 304 {
            return Some(a);
        }
        if a.header("transfer-encoding").is_some() {
            let (data, used, trailers) = read_chunked(s, buf).await?;
            a.raw = buf[..used].to_vec();
            buf.drain(..used);
            a.body = data;
            if !trailers.is_empty() {
                a.body.extend_from_slice(b"|trailers:");
                a.body.extend_from_slice(trailers.trim().as_bytes());
            }
        } else if let Some(len) = a.header("content-length") {
            let len: usize = len.parse().ok()?;
            fill(s, buf, len).await?;
            a.body = buf.drain(..len).collect();
        } else {
            // Until close.
            let _ = s.read_to_end(buf).await;
            a.body = std::mem::take(buf);
        }
        return Some(a);
    }
}

/// Whether the proxy closes `s` within a few seconds (nothing more arrives).
async fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

async fn proxy_in_front(port: u16) -> Proxy {
    let p = Proxy::start(
        // Two threads: connections and their pooled server connections on both runtimes.
        "upstream_read_timeout_ms = 1000\nthreads = 2",
        &format!(
            "[upstreams]\nservers = [\"127.0.0.1:{port}\"]\n[health]\ninterval_ms = 100\ntimeout_ms = 500\n"
        ),
    );
    // Until the first check passed, requests wait for it; one answer proves it.
    eventually(
        Duration::from_secs(20),
        "the proxy reaches the scripted server",
        || async {
            let mut s = TcpStream::connect(("127.0.0.1", p.port)).await.ok()?;
            s.write_all(b"GET /readyz HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .ok()?;
            let a = read_answer(&mut s, &mut Vec::new(), false).await?;
            (a.status == 200).then_some(())
        },
    )
    .await;
    p
}

fn requests_to(log: &Log, path: &str) -> Vec<Seen> {
    log.lock()
        .unwrap()
        .iter()
        .filter(|s| s.head.split(' ').nth(1) == Some(path))
        .cloned()
        .collect()
}

#[tokio::test]
async fn bodies_in_every_framing_go_through_as_they_came() {
    let (port, log) = scripted_server().await;
    let p = proxy_in_front(port).await;
    let mut s = TcpStream::connect(("127.0.0.1", p.port)).await.unwrap();
    // Separate writes go out as separate segments.
    s.set_nodelay(true).unwrap();
    let mut buf = Vec::new();

    // A chunked request body, written in pieces, with a trailer: forwarded chunked (the
    // server decodes it), hop-by-hop headers gone, the answer's too.
    s.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: x-mine\r\nx-mine: 1\r\nte: trailers\r\n\r\n4\r\nWiki")
        .await
        .unwrap();
    s.write_all(b"\r\n5\r\npedia\r\n0\r\nx-sum: 9\r\n\r\n")
        .await
        .unwrap();
    let a = read_answer(&mut s, &mut buf, false).await.unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(a.body, b"Wikipedia|trailers:x-sum: 9");
    assert_eq!(a.header("x-hop"), None, "{}", a.head);
    assert_eq!(a.header("keep-alive"), None, "{}", a.head);
    assert!(a.header("x-request-id").is_some());
    let seen = requests_to(&log, "/echo").pop().unwrap();
    assert_eq!(seen.header("transfer-encoding"), ["chunked"]);
    assert_eq!(seen.body, b"Wikipedia|trailers:x-sum: 9");
    assert!(seen.header("x-mine").is_empty(), "{}", seen.head);
    // TE is hop-by-hop, but "trailers" holds on the next hop too (trailers go through).
    assert_eq!(seen.header("te"), ["trailers"]);
    assert_eq!(seen.header("x-forwarded-for"), ["127.0.0.1"]);

    // A chunked answer, streamed in pieces, reaches the client byte for byte.
    s.write_all(b"GET /chunked HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let a = read_answer(&mut s, &mut buf, false).await.unwrap();
    assert_eq!(a.body, b"hello world|trailers:x-trailer: t");
    assert_eq!(
        a.raw,
        b"5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\nx-trailer: t\r\n\r\n"
    );

    // HEAD and 204: no body whatever the head says; the connection goes on.
    s.write_all(b"HEAD /head HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let a = read_answer(&mut s, &mut buf, true).await.unwrap();
    assert_eq!(
        (a.status, a.header("content-length").as_deref()),
        (200, Some("1000"))
    );
    s.write_all(b"GET /no-content HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        read_answer(&mut s, &mut buf, false).await.unwrap().status,
        204
    );

    // Long bodies stream both ways (4 MiB up in pieces and back).
    let big: Vec<u8> = (0..(4u32 << 20)).map(|i| (i % 253) as u8).collect();
    s.write_all(
        format!(
            "POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
            big.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    for piece in big.chunks(300_000) {
        s.write_all(piece).await.unwrap();
    }
    let a = read_answer(&mut s, &mut buf, false).await.unwrap();
    assert_eq!(a.body.len(), big.len());
    assert!(a.body == big, "the echoed 4 MiB differ");
    s.write_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let a = read_answer(&mut s, &mut buf, false).await.unwrap();
    assert_eq!(a.body.len(), 4 << 20);
    assert!(
        a.body
            .iter()
            .enumerate()
            .all(|(i, b)| *b == ((i % 65536) % 251) as u8)
    );

    // Pipelined: three requests in one write, three answers in order.
    s.write_all(
        b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\none\
                  POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\ntwo\
                  GET /no-content HTTP/1.1\r\nhost: x\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(
        read_answer(&mut s, &mut buf, false).await.unwrap().body,
        b"one"
    );
    assert_eq!(
        read_answer(&mut s, &mut buf, false).await.unwrap().body,
        b"two"
    );
    assert_eq!(
        read_answer(&mut s, &mut buf, false).await.unwrap().status,
        204
    );

    // An answer framed by the server's close: the client's connection closes after it.
    s.write_all(b"GET /until-close HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let a = read_answer(&mut s, &mut buf, false).await.unwrap();
    assert_eq!(a.body, b"all of it");
    assert_eq!(a.header("connection").as_deref(), Some("close"));
    let errors = p.unexpected_errors(&[]);
    assert!(errors.is_empty(), "{errors:?}");
}

#[tokio::test]
async fn expect_continue_early_answers_and_http10_clients() {
    let (port, log) = scripted_server().await;
    let p = proxy_in_front(port).await;

    // The client waits for "100 Continue" before its body: it gets it from the server.
    let mut s = TcpStream::connect(("127.0.0.1", p.port)).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(
        b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), read_head(&mut s, &mut buf))
        .await
        .expect("no 100 Continue")
        .unwrap();
    assert!(
        buf.starts_with(b"HTTP/1.1 100 "),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
    buf.drain(..n);
    s.write_all(b"hello").await.unwrap();
    let a = read_answer(&mut s, &mut buf, false).await.unwrap();
    assert_eq!((a.status, a.body.as_slice()), (200, &b"hello"[..]));

    // A server that answers without reading the body: the client gets that answer, and
    // the connection closes after it.
    let mut s = TcpStream::connect(("127.0.0.1", p.port)).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(b"POST /refuse-body HTTP/1.1\r\nhost: x\r\ncontent-length: 8000000\r\n\r\n")
        .await
        .unwrap();
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        let block = vec![b'x'; 65536];
        for _ in 0..122 {
            if w.write_all(&block).await.is_err() {
                break;
            }
        }
    });
    // The proxy stops writing to the server after the read timeout (1 s) of no progress,
    // then forwards the answer it already has.
    let a = tokio::time::timeout(
        Duration::from_secs(10),
        read_answer(&mut r, &mut buf, false),
    )
    .await
    .expect("no answer")
    .expect("closed without an answer");
    writer.abort();
    REFUSED_READ.notify_one();
    assert_eq!((a.status, a.body.as_slice()), (413, &b"too big\n"[..]));
    assert_eq!(a.header("connection").as_deref(), Some("close"));

    // HTTP/1.0: answered, then closed.
    let mut s = TcpStream::connect(("127.0.0.1", p.port)).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(b"POST /echo HTTP/1.0\r\ncontent-length: 2\r\n\r\nhi")
        .await
        .unwrap();
    let a = read_answer(&mut s, &mut buf, false).await.unwrap();
    assert_eq!((a.status, a.body.as_slice()), (200, &b"hi"[..]));
    assert_eq!(a.header("connection").as_deref(), Some("close"));
    assert!(closed(&mut s).await);
    assert!(
        requests_to(&log, "/echo")
            .last()
            .unwrap()
            .head
            .contains(" HTTP/1.0\r\n")
    );
}

#[tokio::test]
async fn smuggling_shapes_are_refused_and_bad_or_late_answers_are_the_proxys_errors() {
    let (port, log) = scripted_server().await;
    let p = proxy_in_front(port).await;
    let before = log.lock().unwrap().len();
    for (what, req) in [
        ("CL + TE", &b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"[..]),
        ("TE not ending in chunked", b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked, gzip\r\n\r\n"),
        ("two lengths", b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab"),
        ("a signed length", b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: +2\r\n\r\nab"),
        ("TE in HTTP/1.0", b"POST /echo HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("a bad chunk", b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"),
        ("a space before the colon", b"GET /echo HTTP/1.1\r\nhost : x\r\n\r\n"),
        ("a request line as a chunk size", b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n1b /admin HTTP/1.1\r\n"),
    ] {
        let mut s = TcpStream::connect(("127.0.0.1", p.port)).await.unwrap();
        s.write_all(req).await.unwrap();
        let mut buf = Vec::new();
        let a = read_answer(&mut s, &mut buf, false).await.unwrap_or_else(|| panic!("{what}: no answer"));
        assert_eq!(a.status, 400, "{what}: {}", a.head);
        assert_eq!(a.header("connection").as_deref(), Some("close"), "{what}");
        assert!(closed(&mut s).await, "{what}: not closed");
    }
    assert_eq!(
        log.lock().unwrap().len(),
        before,
        "a refused request reached the server"
    );
    assert!(p.stats().await["bad_requests"].as_u64().unwrap() >= 8);

    // `Connection` naming a framing header does not take it away: the server frames the
    // body as the proxy did (else "hello" would be read as the start of another request).
    let mut s = TcpStream::connect(("127.0.0.1", p.port)).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\nconnection: content-length, transfer-encoding\r\ncontent-length: 5\r\n\r\nhello")
        .await
        .unwrap();
    let a = read_answer(&mut s, &mut buf, false).await.unwrap();
    assert_eq!((a.status, a.body.as_slice()), (200, &b"hello"[..]));
    let seen = requests_to(&log, "/echo");
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].header("content-length"), ["5"]);

    // A malformed answer is a 502, a late one a 504 (read timeout 1 s); the connection
    // stays usable after both.
    let mut s = TcpStream::connect(("127.0.0.1", p.port)).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(b"GET /bad-length HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let a = read_answer(&mut s, &mut buf, false).await.unwrap();
    assert_eq!(a.status, 502);
    assert!(
        String::from_utf8_lossy(&a.body).contains("malformed"),
        "{:?}",
        a
    );
    s.write_all(b"GET /status-99 HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let a = read_answer(&mut s, &mut buf, false).await.unwrap();
    assert_eq!(a.status, 502, "{a:?}");
    s.write_all(b"GET /stall HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let a = read_answer(&mut s, &mut buf, false).await.unwrap();
    assert_eq!(a.status, 504, "{a:?}");
    s.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nok")
        .await
        .unwrap();
    assert_eq!(
        read_answer(&mut s, &mut buf, false).await.unwrap().body,
        b"ok"
    );
}
