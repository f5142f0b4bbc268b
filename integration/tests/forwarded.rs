//! Behind a reverse proxy: the client address, scheme, port and request id a service sees,
//! and what an untrusted client cannot make it believe (`http.trusted_proxies`). The test
//! client connects from 127.0.0.1, so trusting 127.0.0.1/32 makes it "the proxy".

use oxbus_integration::*;
use serde_json::Value;
use std::time::Duration;

const WHOAMI: &str = r#"from oxbus import Service


class WhoAmI(Service):
    """Everything the service is told about where the request came from."""
    name = 'fwd.whoami'

    def handle(self):
        http = self.request.http
        h = http.headers
        self.response.payload = {
            'remote_addr': http.remote_addr, 'scheme': http.scheme, 'port': http.port,
            'cid': self.cid,
            'x_forwarded_for': h.getall('x-forwarded-for'),
            'x_forwarded_proto': h.getall('x-forwarded-proto'),
            'x_forwarded_port': h.getall('x-forwarded-port'),
            'x_forwarded_host': h.getall('x-forwarded-host'),
            'forwarded': h.getall('forwarded'),
            'x_request_id': h.getall('x-request-id'),
        }
"#;

fn env(trusted: &str) -> Env {
    Env::new()
        .service("fwd.py", WHOAMI)
        .channel("/whoami", &["GET"], "fwd.whoami")
        .set("http", "trusted_proxies", trusted)
}

/// A client that pretends to be a proxy: every forwarding header, and a request id.
const SPOOFED: &[(&str, &str)] = &[
    ("x-forwarded-for", "6.6.6.6"),
    ("x-forwarded-proto", "https"),
    ("x-forwarded-port", "443"),
    ("x-forwarded-host", "evil.example"),
    ("forwarded", "for=6.6.6.6;proto=https"),
    ("x-request-id", "spoofed-request-1"),
];

async fn whoami(srv: &Server, headers: &[(&str, &str)]) -> (Value, String) {
    let r = srv.request("GET", "/whoami", headers, b"").await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    (r.json(), r.cid())
}

/// The server's own cids: 20 hex characters.
fn is_generated(cid: &str) -> bool {
    cid.len() == 20 && cid.bytes().all(|b| b.is_ascii_hexdigit())
}

async fn spoofing_is_ignored(srv: &Server) {
    let (j, cid) = whoami(srv, SPOOFED).await;
    assert_eq!(j["remote_addr"], "127.0.0.1", "{j}");
    assert_eq!(j["scheme"], "http", "{j}");
    assert_eq!(j["port"], srv.port(), "{j}");
    // The service cannot be fooled by reading the headers itself either.
    for h in [
        "x_forwarded_for",
        "x_forwarded_proto",
        "x_forwarded_port",
        "x_forwarded_host",
        "forwarded",
    ] {
        assert_eq!(j[h], serde_json::json!([]), "{h} reached the service: {j}");
    }
    // The request id stays a header, but is not the cid.
    assert_eq!(j["x_request_id"], serde_json::json!(["spoofed-request-1"]));
    assert!(is_generated(&cid), "{cid}");
    assert_eq!(j["cid"], cid.as_str());
}

#[tokio::test]
async fn nobody_is_trusted_by_default() {
    // (a) trusted_proxies empty: the client is the TCP peer, whatever it claims.
    let srv = env("[]").start().await;
    spoofing_is_ignored(&srv).await;
    let (j, _) = whoami(&srv, &[]).await;
    assert_eq!(j["remote_addr"], "127.0.0.1", "{j}");
    assert_eq!(j["scheme"], "http", "{j}");
    srv.assert_no_errors(&[]);
}

#[tokio::test]
async fn a_trusted_proxy_is_believed() {
    // (b) the peer (127.0.0.1) is a trusted proxy.
    let srv = env(r#"["127.0.0.1/32"]"#).start().await;
    let (j, cid) = whoami(
        &srv,
        &[
            ("x-forwarded-for", "6.6.6.6, 127.0.0.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-port", "443"),
            ("x-request-id", "alb-req-0001"),
        ],
    )
    .await;
    assert_eq!(j["remote_addr"], "6.6.6.6", "{j}");
    assert_eq!(j["scheme"], "https", "{j}");
    assert_eq!(j["port"], 443, "{j}");
    assert_eq!(cid, "alb-req-0001");
    assert_eq!(j["cid"], "alb-req-0001");
    // The headers reach the service as sent.
    assert_eq!(
        j["x_forwarded_for"],
        serde_json::json!(["6.6.6.6, 127.0.0.1"])
    );
    assert_eq!(j["x_forwarded_proto"], serde_json::json!(["https"]));

    // Forged hops left of the client the proxy saw are not reached; repeated headers are
    // one list.
    let (j, _) = whoami(
        &srv,
        &[
            ("x-forwarded-for", "1.1.1.1, 2.2.2.2"),
            ("x-forwarded-for", "203.0.113.7"),
        ],
    )
    .await;
    assert_eq!(j["remote_addr"], "203.0.113.7", "{j}");
    assert_eq!(j["scheme"], "http", "{j}");
    assert_eq!(j["port"], srv.port(), "{j}");

    // Without the headers, the proxy itself is the client.
    let (j, cid) = whoami(&srv, &[]).await;
    assert_eq!(j["remote_addr"], "127.0.0.1");
    assert!(is_generated(&cid), "{cid}");

    // A request id that cannot be a cid (too long, or characters outside [A-Za-z0-9._:-])
    // is replaced by one of ours; an unknown scheme is not believed.
    let long = "a".repeat(65);
    for bad in ["has space", "a/b", long.as_str()] {
        let (j, cid) = whoami(
            &srv,
            &[("x-request-id", bad), ("x-forwarded-proto", "gopher")],
        )
        .await;
        assert!(is_generated(&cid), "{bad:?} became the cid {cid}");
        assert_eq!(j["scheme"], "http");
    }

    // The request id is the cid of every answer, the server's own errors included.
    let r = srv
        .request("GET", "/nowhere", &[("x-request-id", "alb-req-0002")], b"")
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.cid(), "alb-req-0002");
    assert_eq!(r.json()["cid"], "alb-req-0002");
    srv.assert_no_errors(&[]);
}

#[tokio::test]
async fn a_peer_outside_the_trusted_networks_is_not_believed() {
    // (c) proxies are trusted, but not loopback, where this client connects from.
    let srv = env(r#"["10.0.0.0/8"]"#).start().await;
    spoofing_is_ignored(&srv).await;
    srv.assert_no_errors(&[]);
}

#[tokio::test]
async fn a_bad_trusted_proxies_entry_stops_the_server_naming_it() {
    let mut srv = env(r#"["10.0.0.0/8", "10.0.0.1/8"]"#).spawn();
    assert_eq!(
        srv.wait_exit(Duration::from_secs(30)),
        Some(78),
        "a configuration error is EX_CONFIG"
    );
    let log = srv.log();
    assert!(
        log.contains(r#"http.trusted_proxies = "10.0.0.1/8""#)
            && log.contains("host bits are set: the network is 10.0.0.0/8"),
        "{log}"
    );
}
