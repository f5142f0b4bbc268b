//! Faults at the two HTTP edges (issue 16): the server's own listener and `oxbus proxy` in
//! front of it must refuse the same request-framing shapes the same way, accept the same
//! number of headers, refuse JSON nested past the limit before a worker decodes it, and a
//! server that never sends "100 Continue" still gets the body through the proxy.

use oxbus_integration::proxy::Proxy;
use oxbus_integration::raw::{self, Answer};
use oxbus_integration::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Request-framing shapes both edges refuse with 400 and a close: (what, request bytes).
/// `{H}` stands for the request's Host header line.
const REFUSED_SHAPES: &[(&str, &str)] = &[
    (
        "Content-Length then Transfer-Encoding",
        "POST /echo HTTP/1.1\r\n{H}content-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "Transfer-Encoding then Content-Length",
        "POST /echo HTTP/1.1\r\n{H}transfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n0\r\n\r\n",
    ),
    (
        "a Transfer-Encoding not ending in chunked",
        "POST /echo HTTP/1.1\r\n{H}transfer-encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
    ),
    (
        "a coding before chunked",
        "POST /echo HTTP/1.1\r\n{H}transfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "an empty last element",
        "POST /echo HTTP/1.1\r\n{H}transfer-encoding: chunked,\r\n\r\n0\r\n\r\n",
    ),
    (
        "an empty first element",
        "POST /echo HTTP/1.1\r\n{H}transfer-encoding: , chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "identity then chunked, in two headers",
        "POST /echo HTTP/1.1\r\n{H}transfer-encoding: identity\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "chunked twice, in two headers",
        "POST /echo HTTP/1.1\r\n{H}transfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "chunked twice, in one header",
        "POST /echo HTTP/1.1\r\n{H}transfer-encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "identity alone",
        "POST /echo HTTP/1.1\r\n{H}transfer-encoding: identity\r\ncontent-length: 2\r\n\r\n{}",
    ),
    (
        "Transfer-Encoding in HTTP/1.0",
        "POST /echo HTTP/1.0\r\n{H}transfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "two different lengths",
        "POST /echo HTTP/1.1\r\n{H}content-length: 1\r\ncontent-length: 2\r\n\r\n{}",
    ),
    (
        "a list of lengths",
        "POST /echo HTTP/1.1\r\n{H}content-length: 2, 2\r\n\r\n{}",
    ),
    (
        "a signed length",
        "POST /echo HTTP/1.1\r\n{H}content-length: +2\r\n\r\n{}",
    ),
    (
        "a negative length",
        "POST /echo HTTP/1.1\r\n{H}content-length: -1\r\n\r\n",
    ),
    (
        "a space before the colon",
        "POST /echo HTTP/1.1\r\n{H}content-length : 2\r\n\r\n{}",
    ),
    (
        "obsolete line folding",
        "POST /echo HTTP/1.1\r\n{H}x-a: 1\r\n  folded\r\ncontent-length: 2\r\n\r\n{}",
    ),
    (
        "a request line as a chunk size",
        "POST /echo HTTP/1.1\r\n{H}transfer-encoding: chunked\r\n\r\n1b /admin HTTP/1.1\r\n",
    ),
    (
        "a malformed chunk size",
        "POST /echo HTTP/1.1\r\n{H}transfer-encoding: chunked\r\n\r\nzz\r\n",
    ),
];

fn shape(template: &str, port: u16) -> Vec<u8> {
    template
        .replace("{H}", &format!("host: 127.0.0.1:{port}\r\n"))
        .into_bytes()
}

/// Sends a refused shape to `port`; the answer must be a 400 followed by a close.
async fn assert_refused(edge: &str, what: &str, port: u16, template: &str) -> Answer {
    let (a, mut s) = raw::exchange(port, &shape(template, port)).await;
    let a = a.unwrap_or_else(|| panic!("{edge}, {what}: no answer"));
    assert_eq!(a.status, 400, "{edge}, {what}: {}", a.head);
    assert!(
        raw::closed(&mut s).await,
        "{edge}, {what}: the connection stays open"
    );
    a
}

#[tokio::test]
async fn both_edges_refuse_the_same_framing_shapes_with_400_and_a_close() {
    let srv = Env::new().with_test_services().start().await;
    let p = Proxy::in_front_of("", &[srv.port()]).await;
    for (what, template) in REFUSED_SHAPES {
        // The server's own answer names why (except for the malformed chunk, which is
        // hyper's decoder's to refuse: its head was fine).
        let a = assert_refused("server", what, srv.port(), template).await;
        if !what.contains("chunk size") {
            assert!(a.json()["error"].is_string(), "server, {what}: {a:?}");
        }
        // The proxy refuses it itself: nothing reaches the server.
        let before = p.stats().await["bad_requests"].as_u64().unwrap();
        assert_refused("proxy", what, p.port, template).await;
        let after = p.stats().await["bad_requests"].as_u64().unwrap();
        assert_eq!(after, before + 1, "proxy, {what}: not refused by the proxy");
    }
    // The same bytes framed plainly are served at both edges, and the connection stays.
    for port in [srv.port(), p.port] {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut buf = Vec::new();
        for req in [
            "POST /echo HTTP/1.1\r\n{H}transfer-encoding: Chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
            "POST /echo HTTP/1.1\r\n{H}content-length: 2\r\ncontent-length: 2\r\n\r\n{}",
        ] {
            s.write_all(&shape(req, port)).await.unwrap();
            let a = raw::read_answer(&mut s, &mut buf).await.expect("an answer");
            assert_eq!(a.status, 200, "{port}: {req:?}: {a:?}");
            assert_eq!(a.json()["ok"], true);
        }
    }
    // A refused head behind a good one on the same connection: the good one is answered
    // first, then the refusal, then the close.
    let port = srv.port();
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let good = shape(
        "POST /echo HTTP/1.1\r\n{H}content-length: 2\r\n\r\n{}",
        port,
    );
    let bad = shape(REFUSED_SHAPES[0].1, port);
    s.write_all(&[good, bad].concat()).await.unwrap();
    let mut buf = Vec::new();
    let first = raw::read_answer(&mut s, &mut buf)
        .await
        .expect("first answer");
    assert_eq!(first.status, 200, "{first:?}");
    let second = raw::read_answer(&mut s, &mut buf)
        .await
        .expect("second answer");
    assert_eq!(second.status, 400, "{second:?}");
    assert_eq!(second.header("connection").as_deref(), Some("close"));
    assert!(raw::closed(&mut s).await);
    srv.assert_no_errors(&[]);
}

/// A GET of `path` carrying `n` header fields in all (Host included), `forwarding` of them
/// the forwarding headers a proxy sets.
fn with_headers(port: u16, path: &str, n: usize, forwarding: usize) -> Vec<u8> {
    let mut r = format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n");
    let fwd = [
        "x-forwarded-for: 10.0.0.1",
        "x-forwarded-proto: http",
        "x-forwarded-port: 80",
        "x-request-id: abc-1",
    ];
    for f in &fwd[..forwarding] {
        r.push_str(f);
        r.push_str("\r\n");
    }
    for i in 0..(n - 1 - forwarding) {
        r.push_str(&format!("x-h{i}: v\r\n"));
    }
    r.push_str("\r\n");
    r.into_bytes()
}

#[tokio::test]
async fn the_header_limit_is_the_same_directly_and_through_the_proxy() {
    let srv = Env::new().with_test_services().start().await;
    let p = Proxy::in_front_of("", &[srv.port()]).await;
    // At the boundary: 99 and 100 header fields are served, 101 is a 431, at both edges.
    for (n, want) in [(99, 200), (100, 200), (101, 431)] {
        for (edge, port) in [("server", srv.port()), ("proxy", p.port)] {
            let (a, _) = raw::exchange(port, &with_headers(port, "/pid", n, 0)).await;
            let a = a.unwrap_or_else(|| panic!("{edge}, {n} headers: no answer"));
            assert_eq!(a.status, want, "{edge}, {n} headers: {a:?}");
            if want == 431 {
                let error = a.json()["error"].as_str().unwrap_or_default().to_owned();
                assert!(error.contains("100 request headers"), "{edge}: {error}");
            }
        }
    }
    // The forwarding headers a client sends itself do not count either (the proxy replaces
    // them): 100 others and 4 of them are served at both edges, one more other is not.
    for (n, want) in [(104, 200), (105, 431)] {
        for (edge, port) in [("server", srv.port()), ("proxy", p.port)] {
            let (a, _) = raw::exchange(port, &with_headers(port, "/pid", n, 4)).await;
            let a = a.unwrap_or_else(|| panic!("{edge}, {n} headers: no answer"));
            assert_eq!(a.status, want, "{edge}, {n} headers with forwarding: {a:?}");
        }
    }
}

/// `[` × n, then `]` × n.
fn nested(n: usize) -> Vec<u8> {
    [b"[".repeat(n), b"]".repeat(n)].concat()
}

#[tokio::test]
async fn json_nested_past_the_limit_is_a_400_naming_it_on_every_path() {
    let srv = Env::new()
        .with_test_services()
        .jsonrpc_channel("/rpc", &["test.echo"])
        .start()
        .await;
    let token = srv.admin_token();
    let rpc = |params: &[u8]| {
        [
            &br#"{"jsonrpc":"2.0","method":"test.echo","id":7,"params":"#[..],
            params,
            b"}",
        ]
        .concat()
    };
    let json = [("content-type", "application/json")];
    // At the limit: served on every path (the JSON-RPC envelope is one level itself).
    let r = srv.request("POST", "/echo", &json, &nested(100)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = srv.request("POST", "/rpc", &json, &rpc(&nested(99))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(r.json()["result"].is_object(), "{}", r.json());
    let r = srv
        .admin("POST", "/v1/invoke/test.echo", Some(&token), &nested(100))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    // One level more, and far more: a 400 that names the limit, on every path.
    for depth in [1000, 101, 100_000] {
        let r = srv.request("POST", "/echo", &json, &nested(depth)).await;
        assert_eq!(r.status, 400, "REST, {depth}: {:?}", r.body);
        assert_eq!(r.json()["limit"], 100);
        assert!(r.json()["error"].as_str().unwrap().contains("100 levels"));

        let r = srv
            .request("POST", "/rpc", &json, &rpc(&nested(depth)))
            .await;
        assert_eq!(r.status, 400, "JSON-RPC, {depth}: {:?}", r.body);
        let j = r.json();
        assert_eq!(j["error"]["code"], -32700, "{j}");
        assert_eq!(j["error"]["data"]["limit"], 100, "{j}");

        let r = srv
            .admin("POST", "/v1/invoke/test.echo", Some(&token), &nested(depth))
            .await;
        assert_eq!(r.status, 400, "admin invoke, {depth}: {:?}", r.body);
        assert_eq!(r.json()["limit"], 100);
    }
    // Brackets inside strings are not nesting.
    let mut body = b"{\"s\": \"".to_vec();
    body.extend(b"[".repeat(1000));
    body.extend(b"\"}");
    let r = srv.request("POST", "/echo", &json, &body).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    srv.assert_no_errors(&[]);
}

/// A server that never sends "100 Continue": it reads each request's body (by its
/// length) and answers 200 with it.
async fn server_without_continue() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(n) = raw::read_head(&mut s, &mut buf).await {
                    let head = String::from_utf8_lossy(&buf[..n]).to_string();
                    buf.drain(..n);
                    let len: usize =
                        raw::header_of(&head, "content-length").map_or(0, |l| l.parse().unwrap());
                    if raw::fill(&mut s, &mut buf, len).await.is_none() {
                        return;
                    }
                    let body: Vec<u8> = buf.drain(..len).collect();
                    let mut out =
                        format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len())
                            .into_bytes();
                    out.extend_from_slice(&body);
                    if s.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn expect_continue_to_a_server_that_never_sends_100_gets_its_body_through() {
    let port = server_without_continue().await;
    // The server's read timeout is long: the body must go after the short wait for 100,
    // not after the proxy gives up on the server.
    let p = Proxy::in_front_of(
        "upstream_read_timeout_ms = 30000\nexpect_continue_timeout_ms = 200",
        &[port],
    )
    .await;

    // A client that waits for "100 Continue" before its body gets one (the proxy's, after
    // its wait), then the server's answer.
    let mut s = TcpStream::connect(("127.0.0.1", p.port)).await.unwrap();
    s.write_all(
        b"POST /up HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let n = raw::read_head(&mut s, &mut buf)
        .await
        .expect("an interim answer");
    assert!(
        buf.starts_with(b"HTTP/1.1 100 "),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
    buf.drain(..n);
    s.write_all(b"hello").await.unwrap();
    let a = raw::read_answer(&mut s, &mut buf).await.expect("an answer");
    assert_eq!((a.status, a.body.as_slice()), (200, &b"hello"[..]), "{a:?}");

    // A client that sends its body without waiting: the same answer, on the same
    // connection.
    s.write_all(
        b"POST /up HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\nexpect: 100-continue\r\n\r\nabc",
    )
    .await
    .unwrap();
    let a = raw::read_answer(&mut s, &mut buf).await.expect("an answer");
    assert_eq!((a.status, a.body.as_slice()), (200, &b"abc"[..]), "{a:?}");
    let errors = p.unexpected_errors(&[]);
    assert!(errors.is_empty(), "{errors:?}");
}

/// Reads what the server sends on `s` until it closes; the statuses of the answers in it.
async fn statuses_until_close(s: &mut TcpStream) -> Vec<u16> {
    let mut buf = Vec::new();
    let mut statuses = Vec::new();
    while let Some(a) = raw::read_answer(s, &mut buf).await {
        statuses.push(a.status);
    }
    statuses
}

#[tokio::test]
async fn a_chunked_body_the_proxy_refuses_leaves_no_later_head_unchecked() {
    // hyper reads a chunk size of 16 hex digits; the proxy's rules do not. The server must
    // not pass what follows such a body to hyper unchecked: here a head both edges refuse
    // (Content-Length with Transfer-Encoding) would otherwise be served.
    let srv = Env::new().with_test_services().start().await;
    let port = srv.port();
    let body = "0000000000000003\r\nabc\r\n0\r\n\r\n";
    let smuggled = shape(
        &format!(
            "POST /echo HTTP/1.1\r\n{{H}}transfer-encoding: chunked\r\n\r\n{body}\
             POST /echo HTTP/1.1\r\n{{H}}content-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"
        ),
        port,
    );
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(&smuggled).await.unwrap();
    let statuses = statuses_until_close(&mut s).await;
    assert_eq!(statuses, [400], "answers: {statuses:?}");
    // The 16-digit chunk size alone: a 400 and a close, as at the proxy.
    let alone = shape(
        &format!("POST /echo HTTP/1.1\r\n{{H}}transfer-encoding: chunked\r\n\r\n{body}"),
        port,
    );
    let (a, mut s) = raw::exchange(port, &alone).await;
    assert_eq!(a.expect("an answer").status, 400);
    assert!(raw::closed(&mut s).await, "the connection stays open");
    srv.assert_no_errors(&[]);
}

#[tokio::test]
async fn a_refused_head_is_answered_even_while_its_body_is_still_coming() {
    // The head alone first, then (without reading) a large body in pieces: the server
    // refuses the head at once, and what the client still sends must not turn the close
    // into a reset that destroys the 400 before the client reads it.
    let srv = Env::new().with_test_services().start().await;
    let port = srv.port();
    let head = shape(
        "POST /echo HTTP/1.1\r\n{H}content-length: 524288\r\ntransfer-encoding: chunked\r\n\r\n",
        port,
    );
    // Before it, a request with a large answer that a client with a small receive buffer
    // has not read yet: the answers are still queued at the server when it closes, and a
    // reset would destroy them.
    let big = format!("{{\"a\":\"{}\"}}", "b".repeat(512 * 1024));
    let first = shape(
        &format!(
            "POST /echo HTTP/1.1\r\n{{H}}content-type: application/json\r\ncontent-length: {}\r\n\r\n{big}",
            big.len()
        ),
        port,
    );
    for round in 0..3 {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        let mut s = sock.connect(([127, 0, 0, 1], port).into()).await.unwrap();
        s.write_all(&first).await.unwrap();
        s.write_all(&head).await.unwrap();
        let piece = vec![b'a'; 16 * 1024];
        for i in 0..16 {
            // The server reads and drops it (a reset would fail these writes).
            if let Err(e) = s.write_all(&piece).await {
                panic!("round {round}: writing piece {i} of the body: {e}");
            }
        }
        let mut buf = Vec::new();
        let a = raw::read_answer(&mut s, &mut buf)
            .await
            .unwrap_or_else(|| panic!("round {round}: no first answer (reset?)"));
        assert_eq!(a.status, 200, "round {round}: {}", a.head);
        let a = raw::read_answer(&mut s, &mut buf)
            .await
            .unwrap_or_else(|| panic!("round {round}: no answer (reset?)"));
        assert_eq!(a.status, 400, "round {round}: {a:?}");
        // ...and the connection then ends with a close, not a reset.
        let mut rest = [0u8; 64];
        match s.read(&mut rest).await {
            Ok(0) => {}
            other => panic!("round {round}: after the answer: {other:?}"),
        }
    }
    srv.assert_no_errors(&[]);
}

#[tokio::test]
async fn expect_continue_from_an_http_1_0_client_is_ignored() {
    // RFC 9110: a server ignores Expect: 100-continue in an HTTP/1.0 request. The proxy
    // must not hold the body for it, nor send the client an interim answer.
    // A server that says when a request head reached it, then reads the body and answers
    // 200 with it (never "100 Continue").
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let (got_head, mut head_seen) = tokio::sync::mpsc::unbounded_channel::<()>();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let got_head = got_head.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(n) = raw::read_head(&mut s, &mut buf).await {
                    // The proxy's health checks are GETs.
                    let post = buf.starts_with(b"POST");
                    buf.drain(..n);
                    let mut out = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n".to_vec();
                    if post {
                        let _ = got_head.send(());
                        if raw::fill(&mut s, &mut buf, 5).await.is_none() {
                            return;
                        }
                        out.extend(buf.drain(..5));
                    } else {
                        out.extend_from_slice(b"ready");
                    }
                    if s.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    // The wait for "100 Continue" is far longer than the test's bound on the answer: held
    // for it, the body would not get through in time.
    let p = Proxy::in_front_of(
        "upstream_read_timeout_ms = 300000\nexpect_continue_timeout_ms = 300000",
        &[port],
    )
    .await;
    let mut s = TcpStream::connect(("127.0.0.1", p.port)).await.unwrap();
    s.write_all(
        b"POST /up HTTP/1.0\r\nhost: x\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    // The body goes only once the head reached the server (apart from it, as a client
    // that does not wait sends it).
    head_seen.recv().await.expect("the head reaches the server");
    s.write_all(b"hello").await.unwrap();
    let mut buf = Vec::new();
    let n = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        raw::read_head(&mut s, &mut buf),
    )
    .await
    .expect("the body was held for a 100 Continue")
    .expect("an answer");
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    buf.drain(..n);
    raw::fill(&mut s, &mut buf, 5).await.expect("the body");
    assert_eq!(&buf[..5], b"hello");
}
