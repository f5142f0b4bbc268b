//! The test upstream of the outgoing e2e tests (`oxbus_integration::upstream`) checked on
//! its own with a plain HTTP/1.1 client: each mode answers as documented, the token
//! endpoint and the 401 of a revoked token, and TLS with the CA it made (a client that does
//! not trust that CA fails its handshake).

use oxbus_integration::upstream::{OAuthClient, Upstream};
use serde_json::Value;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// One request with `Connection: close`; (status, body) or the I/O error.
async fn send<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    let text = String::from_utf8_lossy(&out);
    let Some((head, _)) = text.split_once("\r\n\r\n") else {
        return Err(std::io::Error::other(format!("no answer: {text:?}")));
    };
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body_at = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    Ok((status, out[body_at..].to_vec()))
}

async fn plain(
    up: &Upstream,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<(u16, Vec<u8>)> {
    let s = tokio::net::TcpStream::connect(up.addr).await?;
    send(s, method, path, headers, body).await
}

fn json(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(b)))
}

#[tokio::test]
async fn every_mode_answers_as_documented() {
    let up = Upstream::plain().await;
    let (st, b) = plain(&up, "POST", "/echo/a?x=1&y=2", &[("x-h", "v")], "hello")
        .await
        .unwrap();
    assert_eq!(st, 200);
    let e = json(&b);
    assert_eq!(e["method"], "POST");
    assert_eq!(e["path"], "/echo/a");
    assert_eq!(e["query"], "x=1&y=2");
    assert_eq!(e["headers"]["x-h"], "v");
    assert_eq!(e["body"], "hello");
    assert_eq!(up.requests()[0].header("x-h"), Some("v"));

    let (st, b) = plain(&up, "GET", "/status/418/z", &[], "").await.unwrap();
    assert_eq!((st, json(&b)["status"].as_u64()), (418, Some(418)));
    let (st, b) = plain(&up, "GET", "/big/5000", &[], "").await.unwrap();
    assert_eq!((st, b.len()), (200, 5000));
    let (st, b) = plain(&up, "GET", "/slow/50/q", &[], "").await.unwrap();
    assert_eq!(
        (st, json(&b)["path"].clone()),
        (200, Value::from("/slow/50/q"))
    );
    // An early close: no answer at all.
    assert!(plain(&up, "GET", "/close/x", &[], "").await.is_err());
    assert_eq!(up.requests_to("/close/").len(), 1);
    assert_eq!(up.requests().len(), 5);
    assert!(up.max_in_flight() >= 1);
}

#[tokio::test]
async fn token_endpoint_and_revoked_tokens() {
    let up = Upstream::plain().await;
    up.oauth(OAuthClient {
        client_id: "me".into(),
        client_secret: "s3cret".into(),
        expires_in: 60,
    });
    let form = "grant_type=client_credentials&client_id=me&client_secret=s3cret";
    let ct = [("content-type", "application/x-www-form-urlencoded")];
    let (st, b) = plain(&up, "POST", "/token", &ct, form).await.unwrap();
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&b));
    let t = json(&b);
    assert_eq!(t["expires_in"], 60);
    let bearer = format!("Bearer {}", t["access_token"].as_str().unwrap());
    let (st, _) = plain(&up, "GET", "/oauth/x", &[("authorization", &bearer)], "")
        .await
        .unwrap();
    assert_eq!(st, 200);
    up.revoke_tokens();
    let (st, _) = plain(&up, "GET", "/oauth/x", &[("authorization", &bearer)], "")
        .await
        .unwrap();
    assert_eq!(st, 401);
    // Basic auth works too; a wrong secret does not.
    use base64::Engine;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("me:s3cret")
    );
    let mut h = ct.to_vec();
    h.push(("authorization", &basic));
    let (st, _) = plain(&up, "POST", "/token", &h, "grant_type=client_credentials")
        .await
        .unwrap();
    assert_eq!(st, 200);
    let (st, _) = plain(
        &up,
        "POST",
        "/token",
        &ct,
        "grant_type=client_credentials&client_id=me&client_secret=no",
    )
    .await
    .unwrap();
    assert_eq!(st, 401);
    assert_eq!(up.token_requests(), 3);
}

#[tokio::test]
async fn tls_with_the_ca_it_made() {
    let dir = std::env::temp_dir().join(format!(
        "oxbus-upstream-tls-{}-{}",
        std::process::id(),
        oxbus_integration::next_id()
    ));
    let up = Upstream::tls(&dir).await;
    assert!(up.address().starts_with("https://localhost:"));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = |roots: rustls::RootCertStore| {
        let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(up.ca_file.as_ref().unwrap()).unwrap(),
    )) {
        roots.add(c.unwrap()).unwrap();
    }
    for name in ["localhost", "127.0.0.1"] {
        let tcp = tokio::net::TcpStream::connect(up.addr).await.unwrap();
        let sni = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
        let tls = client(roots.clone()).connect(sni, tcp).await.unwrap();
        let (st, b) = send(tls, "GET", "/echo/t", &[], "").await.unwrap();
        assert_eq!(
            (st, json(&b)["path"].clone()),
            (200, Value::from("/echo/t"))
        );
    }
    // Not trusting the CA: the handshake fails.
    let tcp = tokio::net::TcpStream::connect(up.addr).await.unwrap();
    let sni = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let e = client(rustls::RootCertStore::empty())
        .connect(sni, tcp)
        .await
        .unwrap_err();
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
