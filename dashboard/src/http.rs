//! The dashboard's HTTP side: the listener, one hyper connection per client, the security
//! headers every answer carries, the static files, sign-in, and the gate in front of every
//! page (a live session; the CSRF token on anything but GET; the role a page's action needs).

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body as HttpBody, Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::App;
use crate::session::Session;

/// A page, a fragment, a file, or a live event stream.
pub enum Body {
    Full(Full<Bytes>),
    Stream(mpsc::Receiver<Bytes>),
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(f) => Pin::new(f).poll_frame(cx),
            Body::Stream(rx) => rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(f) => f.is_end_stream(),
            Body::Stream(_) => false,
        }
    }
}

pub type Resp = Response<Body>;

/// The Content-Security-Policy of every answer: scripts and styles from this origin only (no
/// inline script, style or `eval`), nothing framed, forms posted here only.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' \
                       data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
                       base-uri 'none'";

/// The largest upload read (`POST /deploy` and `/config/plan` of a signed-in user).
pub const MAX_UPLOAD: usize = 8 << 20;
/// The largest body of any other request (a form).
pub const MAX_FORM: usize = 64 << 10;
/// How long a request's body may take to arrive.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 512;

pub fn html(status: StatusCode, markup: maud::Markup) -> Resp {
    let mut r = Response::new(Body::Full(Full::new(Bytes::from(markup.into_string()))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

pub fn text(status: StatusCode, body: impl Into<String>) -> Resp {
    let mut r = Response::new(Body::Full(Full::new(Bytes::from(body.into()))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// 303 to `to` (after a form's POST); for an htmx request, `HX-Redirect` as well.
pub fn redirect(to: &str) -> Resp {
    let mut r = text(StatusCode::SEE_OTHER, "");
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v.clone());
        r.headers_mut().insert("hx-redirect", v);
    }
    r
}

fn secure(mut r: Resp, hsts_max_age_s: Option<u64>) -> Resp {
    let h = r.headers_mut();
    if let Some(age) = hsts_max_age_s.filter(|a| *a > 0)
        && let Ok(v) = HeaderValue::from_str(&format!("max-age={age}"))
    {
        h.insert("strict-transport-security", v);
    }
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}

/// The security headers for this dashboard (HSTS when it serves HTTPS itself).
fn secure_as(app: &App, r: Resp) -> Resp {
    let hsts = app
        .settings
        .tls
        .is_some()
        .then_some(app.settings.hsts_max_age_s);
    secure(r, hsts)
}

/// Serves until the process ends.
pub async fn serve(
    app: Arc<App>,
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match tls {
                None => serve_conn(app, stream, peer).await,
                Some(acceptor) => {
                    let hs = std::time::Duration::from_secs(10);
                    match tokio::time::timeout(hs, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => serve_conn(app, s, peer).await,
                        Ok(Err(e)) => debug!(error = %e, %peer, "TLS handshake failed"),
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

/// One connection's requests, over TCP or TLS.
async fn serve_conn<S>(app: Arc<App>, io: S, peer: SocketAddr)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let app = app.clone();
        async move { Ok::<_, Infallible>(handle(app, req, peer).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(10))
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(io), svc);
    if let Err(e) = conn.await {
        debug!(error = %e, %peer, "dashboard connection ended with an error");
    }
}

/// A request as the pages see it: method, path segments, query, form fields, the session.
pub struct Req {
    pub method: Method,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
    pub peer: SocketAddr,
}

impl Req {
    pub fn q(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The form fields of a `application/x-www-form-urlencoded` body.
    pub fn form(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(&self.body).into_owned().collect()
    }

    /// The client's address: the TCP peer, or, when the peer is one of `trusted`, the
    /// rightmost address of `X-Forwarded-For` that is not itself a trusted proxy.
    pub fn client(&self, trusted: &[ipnet::IpNet]) -> std::net::IpAddr {
        let peer = self.peer.ip();
        let is_trusted = |a: &std::net::IpAddr| trusted.iter().any(|n| n.contains(a));
        if !is_trusted(&peer) {
            return peer;
        }
        let hops: Vec<std::net::IpAddr> = self
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|a| a.trim().parse().ok())
            .collect();
        hops.into_iter()
            .rev()
            .find(|a| !is_trusted(a))
            .unwrap_or(peer)
    }

    pub fn is_htmx(&self) -> bool {
        self.headers.contains_key("hx-request")
    }

    pub fn cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_owned())
    }
}

pub fn field<'a>(form: &'a [(String, String)], key: &str) -> &'a str {
    form.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

pub const SESSION_COOKIE: &str = "oxdash_session";
pub const PRE_COOKIE: &str = "oxdash_pre";

/// A cookie's name: with `secure_cookies`, `__Host-` first (the browser then takes it only
/// from this host over HTTPS with `Path=/`: a sibling subdomain cannot plant one).
pub fn cookie_name(app: &App, base: &str) -> String {
    if app.settings.secure_cookies {
        format!("__Host-{base}")
    } else {
        base.to_owned()
    }
}

pub fn cookie(app: &App, base: &str, value: &str, max_age: Option<u64>) -> HeaderValue {
    let name = cookie_name(app, base);
    let mut c = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict");
    if app.settings.secure_cookies {
        c.push_str("; Secure");
    }
    if let Some(a) = max_age {
        c.push_str(&format!("; Max-Age={a}"));
    }
    HeaderValue::from_str(&c).expect("cookie value is ascii")
}

async fn handle(app: Arc<App>, req: Request<Incoming>, peer: SocketAddr) -> Resp {
    let started = std::time::Instant::now();
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let query: Vec<(String, String)> = parts
        .uri
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let mut r = Req {
        method: parts.method,
        path,
        query,
        headers: parts.headers,
        body: Bytes::new(),
        peer,
    };
    // Only a signed-in user's upload may be large; the session is looked at (not used) here.
    let upload = r.method == Method::POST
        && (r.path == "/deploy" || r.path == "/config/plan")
        && r.cookie(&cookie_name(&app, SESSION_COOKIE))
            .is_some_and(|id| app.sessions.peek(&id));
    let limit = if upload { MAX_UPLOAD } else { MAX_FORM };
    use http_body_util::BodyExt;
    match tokio::time::timeout(
        BODY_TIMEOUT,
        http_body_util::Limited::new(body, limit).collect(),
    )
    .await
    {
        Ok(Ok(b)) => r.body = b.to_bytes(),
        Ok(Err(_)) => {
            return secure_as(
                &app,
                text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the request is larger than {} KiB", limit >> 10),
                ),
            );
        }
        Err(_) => {
            return secure_as(
                &app,
                text(
                    StatusCode::REQUEST_TIMEOUT,
                    "the request's body did not arrive in time",
                ),
            );
        }
    }
    let mut resp = secure_as(&app, route(&app, r).await);
    // The time spent here, admin API calls included (bench/dashboard.py reads it).
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if let Ok(v) = HeaderValue::from_str(&format!("total;dur={ms:.2}")) {
        resp.headers_mut().insert("server-timing", v);
    }
    resp
}

async fn route(app: &Arc<App>, r: Req) -> Resp {
    if let Some(name) = r.path.strip_prefix("/static/") {
        return crate::assets::serve(name);
    }
    match (&r.method, r.path.as_str()) {
        (&Method::GET, "/signin") => {
            let pre = r.cookie(&cookie_name(app, PRE_COOKIE));
            return crate::pages::signin::form(app, r.q("next").unwrap_or("/"), pre, None);
        }
        (&Method::POST, "/signin") => return crate::pages::signin::submit(app, &r).await,
        (&Method::GET, "/healthz") => return text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/favicon.ico") => return text(StatusCode::NO_CONTENT, ""),
        _ => {}
    }
    let session = r
        .cookie(&cookie_name(app, SESSION_COOKIE))
        .and_then(|id| app.sessions.touch(&id).map(|s| (id, s)));
    // A session whose token the servers refused (revoked) ends here.
    let session = match session {
        Some((id, s)) if s.revoked.load(std::sync::atomic::Ordering::Relaxed) => {
            info!(user = %s.user, "session ended: the servers refused its API token");
            app.sessions.remove(&id);
            None
        }
        other => other,
    };
    let Some((sid, session)) = session else {
        if r.method == Method::GET && !r.is_htmx() {
            let mut back = r.path.clone();
            if !r.query.is_empty() {
                back.push('?');
                back.push_str(
                    &form_urlencoded::Serializer::new(String::new())
                        .extend_pairs(&r.query)
                        .finish(),
                );
            }
            return redirect(&format!("/signin?next={}", crate::api::enc(&back)));
        }
        let mut resp = text(
            StatusCode::UNAUTHORIZED,
            "your session has ended: sign in again",
        );
        resp.headers_mut()
            .insert("hx-redirect", HeaderValue::from_static("/signin"));
        return resp;
    };
    if r.method != Method::GET && r.method != Method::HEAD {
        let given = r
            .headers
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .or(csrf_field(&r).await);
        if !given.is_some_and(|g| session.csrf_ok(&g)) {
            info!(user = %session.user, path = %r.path, "refused a request without the session's CSRF token");
            return text(
                StatusCode::FORBIDDEN,
                "refused: the form's CSRF token is missing or wrong (reload the page and try again)",
            );
        }
    }
    if r.method == Method::POST && r.path == "/signout" {
        app.sessions.remove(&sid);
        let mut resp = redirect("/signin");
        resp.headers_mut()
            .insert(header::SET_COOKIE, cookie(app, SESSION_COOKIE, "", Some(0)));
        return resp;
    }
    crate::pages::route(app, &r, &session).await
}

/// The `csrf` field of a urlencoded or multipart form.
async fn csrf_field(r: &Req) -> Option<String> {
    let ct = r
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct.starts_with("application/x-www-form-urlencoded") {
        return r
            .form()
            .into_iter()
            .find(|(k, _)| k == "csrf")
            .map(|(_, v)| v);
    }
    if ct.starts_with("multipart/form-data") {
        return multipart(r)
            .await
            .ok()?
            .into_iter()
            .find(|p| p.name == "csrf")
            .map(|p| String::from_utf8_lossy(&p.data).into_owned());
    }
    None
}

/// One part of a multipart form.
pub struct Part {
    pub name: String,
    pub file_name: Option<String>,
    pub data: Bytes,
}

/// The parts of a `multipart/form-data` body.
pub async fn multipart(r: &Req) -> Result<Vec<Part>, String> {
    let ct = r
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let boundary = multer::parse_boundary(ct).map_err(|e| e.to_string())?;
    let body = r.body.clone();
    let stream = futures_util::stream::once(async move { Ok::<Bytes, Infallible>(body) });
    let mut m = multer::Multipart::new(stream, boundary);
    let mut parts = Vec::new();
    while let Some(field) = m.next_field().await.map_err(|e| e.to_string())? {
        let name = field.name().unwrap_or("").to_owned();
        let file_name = field.file_name().map(str::to_owned);
        let data = field.bytes().await.map_err(|e| e.to_string())?;
        parts.push(Part {
            name,
            file_name,
            data,
        });
    }
    Ok(parts)
}

/// `None` when `s` may do what needs `needed`; else the 403 to answer.
pub fn need(s: &Session, needed: crate::users::Role) -> Option<Resp> {
    if s.role.allows(needed) {
        None
    } else {
        Some(text(
            StatusCode::FORBIDDEN,
            format!(
                "refused: this needs the {} role; {} has role {}",
                needed.as_str(),
                s.user,
                s.role.as_str()
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_client_is_believed_from_trusted_proxies_only() {
        let req = |peer: &str, xff: &str| {
            let mut headers = hyper::HeaderMap::new();
            headers.insert("x-forwarded-for", xff.parse().unwrap());
            super::Req {
                method: hyper::Method::GET,
                path: "/".into(),
                query: vec![],
                headers,
                body: bytes::Bytes::new(),
                peer: format!("{peer}:1234").parse().unwrap(),
            }
        };
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        // From a stranger the header means nothing.
        assert_eq!(
            req("192.0.2.9", "1.2.3.4").client(&trusted),
            ip("192.0.2.9")
        );
        // Through the proxy: the rightmost untrusted hop (a client's own forged entries
        // to its left are not believed).
        assert_eq!(
            req("10.0.0.5", "6.6.6.6, 1.2.3.4").client(&trusted),
            ip("1.2.3.4")
        );
        assert_eq!(
            req("10.0.0.5", "1.2.3.4, 10.0.0.7").client(&trusted),
            ip("1.2.3.4")
        );
        assert_eq!(req("10.0.0.5", "garbage").client(&trusted), ip("10.0.0.5"));
    }
}
