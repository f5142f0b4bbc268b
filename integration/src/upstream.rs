//! A test upstream for outgoing REST connections: hyper on 127.0.0.1:0, plain or TLS (a CA
//! and a server certificate made by `/usr/bin/openssl` for the test), that records every
//! request and answers by the first segment of its path:
//!
//! | path | answer |
//! |---|---|
//! | `/echo/...` (and any path not below) | 200, JSON: `method`, `path`, `query`, `headers` (lower-case name → value, the last of repeats), `body` (text) |
//! | `/slow/{ms}/...` | the echo after `ms` milliseconds |
//! | `/close/...` | nothing: the connection is closed once the request is read |
//! | `/status/{n}/...` | status `n`, JSON `{"status": n}` |
//! | `/big/{bytes}` | 200, a body of `bytes` bytes of `x` |
//! | `/oauth/...` | the echo when `Authorization: Bearer <current token>`, else 401 |
//! | `/token` | an OAuth2 client-credentials token endpoint (POST, form body; the client's id and secret as Basic auth or form fields): a new token `tok-N` each call, `expires_in` as set |
//!
//! [`Upstream::revoke_tokens`] makes every token issued so far fail with 401 (what a token
//! revoked or expired early looks like to a client), so the next call must fetch a new one.
//! [`Upstream::max_in_flight`] is the most requests it was answering at once.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    /// (lower-case name, value), in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Recorded {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The OAuth2 client the token endpoint accepts.
#[derive(Debug, Clone)]
pub struct OAuthClient {
    pub client_id: String,
    pub client_secret: String,
    /// `expires_in` of the tokens it issues, seconds.
    pub expires_in: u64,
}

#[derive(Debug, Default)]
struct State {
    requests: Mutex<Vec<Recorded>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// Tokens issued so far; those numbered above `revoked_upto` are valid.
    issued: AtomicU64,
    revoked_upto: AtomicU64,
    token_requests: AtomicU64,
    oauth: Mutex<Option<OAuthClient>>,
}

/// A running test upstream; stops when dropped.
#[derive(Debug)]
pub struct Upstream {
    pub addr: SocketAddr,
    /// With TLS: the PEM file of the CA that signed its certificate (for `localhost` and
    /// 127.0.0.1).
    pub ca_file: Option<PathBuf>,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    /// A plain HTTP upstream.
    pub async fn plain() -> Upstream {
        Upstream::start(None, None).await
    }

    /// A TLS upstream whose certificate (for `localhost` and 127.0.0.1) a new CA signed;
    /// the CA's and the server's files are written under `dir`.
    pub async fn tls(dir: &Path) -> Upstream {
        let files = make_certs(dir);
        let acceptor = tls_acceptor(&files);
        Upstream::start(Some(acceptor), Some(files.ca)).await
    }

    async fn start(tls: Option<tokio_rustls::TlsAcceptor>, ca_file: Option<PathBuf>) -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| answer(st.clone(), req));
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(tcp).await {
                                let io = hyper_util::rt::TokioIo::new(stream);
                                let _ = http.serve_connection(io, service).await;
                            }
                        }
                        None => {
                            let io = hyper_util::rt::TokioIo::new(tcp);
                            let _ = http.serve_connection(io, service).await;
                        }
                    }
                });
            }
        });
        Upstream {
            addr,
            ca_file,
            state,
            task,
        }
    }

    /// `http://127.0.0.1:PORT` (or `https://localhost:PORT` with TLS).
    pub fn address(&self) -> String {
        match self.ca_file {
            Some(_) => format!("https://localhost:{}", self.addr.port()),
            None => format!("http://127.0.0.1:{}", self.addr.port()),
        }
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// The requests received whose path starts with `prefix`.
    pub fn requests_to(&self, prefix: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.starts_with(prefix))
            .collect()
    }

    /// The most requests it answered at once.
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }

    /// Accepts `client` at `/token` from now on.
    pub fn oauth(&self, client: OAuthClient) {
        *self.state.oauth.lock().unwrap() = Some(client);
    }

    /// Makes every token issued so far invalid.
    pub fn revoke_tokens(&self) {
        let issued = self.state.issued.load(Ordering::SeqCst);
        self.state.revoked_upto.store(issued, Ordering::SeqCst);
    }

    /// How many calls the token endpoint had (granted or not).
    pub fn token_requests(&self) -> u64 {
        self.state.token_requests.load(Ordering::SeqCst)
    }
}

type Answer = Result<Response<Full<Bytes>>, std::io::Error>;

fn reply(status: u16, content_type: &str, body: impl Into<Bytes>) -> Answer {
    Ok(Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .unwrap())
}

fn json(status: u16, v: serde_json::Value) -> Answer {
    reply(status, "application/json", v.to_string())
}

/// Counts the request in flight until dropped.
struct InFlight(Arc<State>);

impl InFlight {
    fn new(st: Arc<State>) -> InFlight {
        let now = st.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        st.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(st)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn answer(st: Arc<State>, req: Request<Incoming>) -> Answer {
    let _counted = InFlight::new(st.clone());
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = req
        .into_body()
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    let rec = Recorded {
        method,
        path,
        query,
        headers,
        body,
    };
    st.requests.lock().unwrap().push(rec.clone());
    let segs: Vec<&str> = rec.path.trim_start_matches('/').split('/').collect();
    match segs.as_slice() {
        ["slow", ms, ..] => {
            let ms: u64 = ms.parse().unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            echo(&rec)
        }
        // An error from the service: hyper closes the connection without an answer.
        ["close", ..] => Err(std::io::Error::other("closed early on purpose")),
        ["status", n, ..] => {
            let n: u16 = n.parse().unwrap_or(500);
            json(n, serde_json::json!({ "status": n }))
        }
        ["big", n] => {
            let n: usize = n.parse().unwrap_or(1 << 20);
            reply(200, "application/octet-stream", vec![b'x'; n])
        }
        ["token"] => token(&st, &rec),
        ["oauth", ..] => {
            let issued = st.issued.load(Ordering::SeqCst);
            let revoked = st.revoked_upto.load(Ordering::SeqCst);
            let valid = rec
                .header("authorization")
                .and_then(|a| a.strip_prefix("Bearer tok-"))
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| n > revoked && n <= issued);
            if valid {
                echo(&rec)
            } else {
                json(401, serde_json::json!({"error": "invalid_token"}))
            }
        }
        _ => echo(&rec),
    }
}

fn echo(rec: &Recorded) -> Answer {
    let headers: serde_json::Map<String, serde_json::Value> = rec
        .headers
        .iter()
        .map(|(n, v)| (n.clone(), serde_json::Value::String(v.clone())))
        .collect();
    json(
        200,
        serde_json::json!({
            "method": rec.method,
            "path": rec.path,
            "query": rec.query,
            "headers": headers,
            "body": String::from_utf8_lossy(&rec.body),
        }),
    )
}

/// The token endpoint: client credentials as Basic auth or form fields.
fn token(st: &State, rec: &Recorded) -> Answer {
    st.token_requests.fetch_add(1, Ordering::SeqCst);
    let Some(client) = st.oauth.lock().unwrap().clone() else {
        return json(
            404,
            serde_json::json!({"error": "no OAuth client configured"}),
        );
    };
    let form: Vec<(String, String)> = form_pairs(&String::from_utf8_lossy(&rec.body));
    let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let basic = rec
        .header("authorization")
        .and_then(|a| a.strip_prefix("Basic "))
        .and_then(|b| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.decode(b).ok()
        })
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| {
            let (u, p) = s.split_once(':')?;
            Some((percent_decode(u), percent_decode(p)))
        });
    let (id, secret) = match basic {
        Some(c) => c,
        None => (
            field("client_id").unwrap_or_default(),
            field("client_secret").unwrap_or_default(),
        ),
    };
    if rec.method != "POST" || field("grant_type").as_deref() != Some("client_credentials") {
        return json(400, serde_json::json!({"error": "unsupported_grant_type"}));
    }
    if id != client.client_id || secret != client.client_secret {
        return json(401, serde_json::json!({"error": "invalid_client"}));
    }
    let n = st.issued.fetch_add(1, Ordering::SeqCst) + 1;
    json(
        200,
        serde_json::json!({
            "access_token": format!("tok-{n}"),
            "token_type": "Bearer",
            "expires_in": client.expires_in,
        }),
    )
}

/// `a=1&b=x+y` → pairs, percent- and `+`-decoded.
pub fn form_pairs(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                percent_decode(&k.replace('+', " ")),
                percent_decode(&v.replace('+', " ")),
            )
        })
        .collect()
}

/// Percent-decoding (invalid escapes kept as they are).
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The certificate files of a TLS upstream.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A new CA and a server certificate for `localhost` / 127.0.0.1 it signed, by
/// `/usr/bin/openssl`, under `dir` (P-256 keys: quick to make).
pub fn make_certs(dir: &Path) -> CertFiles {
    std::fs::create_dir_all(dir).unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new("/usr/bin/openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run /usr/bin/openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    let mut ca = vec!["req", "-x509", "-nodes", "-days", "2"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-subj",
        "/CN=oxbus test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run(&ca);
    let mut csr = vec!["req", "-nodes"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    run(&csr);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.pem",
    ]);
    CertFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    }
}

fn tls_acceptor(files: &CertFiles) -> tokio_rustls::TlsAcceptor {
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(&files.cert).unwrap(),
    ))
    .collect::<Result<Vec<_>, _>>()
    .unwrap();
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(&files.key).unwrap(),
    ))
    .unwrap()
    .expect("a private key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}
