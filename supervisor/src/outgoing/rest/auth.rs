//! A REST connection's credentials: the header basic / apikey / bearer auth adds, and the
//! OAuth2 client-credentials token (fetched on its own small pool, cached for
//! `max(expires_in - refresh_before_s, expires_in / 2)`, one fetch at a time, dropped after
//! a 401).
//!
//! The token fetch runs as its own task bounded by the connection's `timeout_ms`: every
//! call that needs a token meanwhile waits for that one fetch, and a call whose own
//! deadline is shorter stops only its own wait (the fetch goes on and its token is kept).
//!
//! No credential is ever written out: the types here print without them (`Debug`), every
//! header value holding one is marked sensitive, and an error message never quotes a token
//! endpoint's successful answer (it holds the token), nor a token or the client secret
//! echoed by a refusal.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Method, Request};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

use super::pool::{ConnectError, Pool};
use super::read_body;
use super::url::{Address, form_encode};

/// The most of a token endpoint's answer read.
const TOKEN_ANSWER_MAX: u64 = 64 * 1024;
/// A token whose answer gives no `expires_in` is kept this long (or until a 401).
const DEFAULT_EXPIRES_IN: u64 = 3600;
/// An `expires_in` above this (1 day) is taken as this.
const MAX_EXPIRES_IN: u64 = 86_400;
/// A token is kept at least this long, however short its `expires_in`.
const MIN_KEEP: Duration = Duration::from_secs(1);
/// The members of a token endpoint's answer (or of an echoed request) never quoted.
const SECRET_KEYS: [&str; 4] = ["access_token", "refresh_token", "id_token", "client_secret"];

/// Why no token could be had.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token endpoint {url}: {source}")]
    Connect { url: String, source: ConnectError },
    #[error("token endpoint {url}: no free connection")]
    Busy { url: String },
    #[error("token endpoint {url}: the connection broke: {source}")]
    Io { url: String, source: hyper::Error },
    #[error("token endpoint {url}: no answer within timeout_ms {ms}")]
    Timeout { url: String, ms: u64 },
    #[error("token endpoint {url}: the token fetch ended without an answer")]
    Lost { url: String },
    #[error("token endpoint {url} answered HTTP {status}: {excerpt}")]
    Refused {
        url: String,
        status: u16,
        excerpt: String,
    },
    /// A 2xx answer that cannot be used; `what` says why and never quotes the answer.
    #[error("token endpoint {url} answered no usable token: {what}")]
    BadAnswer { url: String, what: String },
}

/// The header one call carries.
pub enum Auth {
    None,
    /// Basic, API key, bearer: the same header on every call (its value sensitive).
    Static(HeaderName, HeaderValue),
    OAuth2(Box<OAuth2>),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::Static(name, _) => write!(f, "Static({name}: <redacted>)"),
            Auth::OAuth2(o) => o.fmt(f),
        }
    }
}

/// What one token fetch ended with, shared by every call that waited for it.
type Outcome = Option<Result<HeaderValue, Arc<TokenError>>>;

/// OAuth2 client credentials.
pub struct OAuth2 {
    inner: Arc<Inner>,
}

struct Inner {
    /// The token URL, for messages.
    url: String,
    host: HeaderValue,
    path: String,
    pool: Pool,
    /// The form body of the token request (holds the client secret).
    form: Bytes,
    /// The client secret, to keep it out of any message.
    secret: String,
    refresh_before: Duration,
    /// How long one fetch may take (the connection's `timeout_ms`).
    fetch_timeout: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The cached `Authorization` value and until when it is used.
    cached: Option<(HeaderValue, Instant)>,
    /// The fetch under way, if any.
    fetching: Option<watch::Receiver<Outcome>>,
}

impl std::fmt::Debug for OAuth2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let i = &self.inner;
        f.debug_struct("OAuth2")
            .field("url", &i.url)
            .field("pool", &i.pool)
            .field("refresh_before", &i.refresh_before)
            .field("fetch_timeout", &i.fetch_timeout)
            .finish_non_exhaustive()
    }
}

/// How long a token whose answer said `expires_in` seconds is used.
pub fn keep_for(expires_in: u64, refresh_before: Duration) -> Duration {
    let life = Duration::from_secs(expires_in.min(MAX_EXPIRES_IN));
    life.saturating_sub(refresh_before)
        .max(life / 2)
        .max(MIN_KEEP)
}

/// An answer's `expires_in`: a whole or fractional number of seconds, as a number or a
/// string; `Err` says what is wrong with it.
fn expires_in(v: Option<&serde_json::Value>) -> Result<u64, String> {
    let secs = match v {
        None | Some(serde_json::Value::Null) => return Ok(DEFAULT_EXPIRES_IN),
        Some(serde_json::Value::Number(n)) => n.as_f64(),
        Some(serde_json::Value::String(s)) => s.trim().parse::<f64>().ok(),
        Some(_) => None,
    };
    match secs {
        Some(s) if s.is_finite() && s >= 0.0 => Ok((s as u64).min(MAX_EXPIRES_IN)),
        Some(s) if s.is_finite() => Err(format!("expires_in {s} is negative")),
        _ => Err("expires_in is not a number of seconds".into()),
    }
}

impl OAuth2 {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        url: &str,
        address: Address,
        pool: Pool,
        client_id: &str,
        client_secret: &str,
        scope: Option<&str>,
        refresh_before_s: u64,
        fetch_timeout: Duration,
    ) -> Result<OAuth2, String> {
        let host = HeaderValue::from_str(&address.authority(false))
            .map_err(|_| format!("token_url {url:?}: bad host"))?;
        let path = if address.rest.is_empty() {
            "/".to_owned()
        } else {
            address.rest.clone()
        };
        let mut pairs = vec![
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            ("client_secret", client_secret),
        ];
        if let Some(s) = scope {
            pairs.push(("scope", s));
        }
        Ok(OAuth2 {
            inner: Arc::new(Inner {
                url: url.to_owned(),
                host,
                path,
                pool,
                form: Bytes::from(form_encode(pairs)),
                secret: client_secret.to_owned(),
                refresh_before: Duration::from_secs(refresh_before_s),
                fetch_timeout,
                state: Mutex::new(State::default()),
            }),
        })
    }

    /// The `Authorization` value: the cached token, or the one of the fetch under way (a
    /// single fetch shared by every call that needs it meanwhile, started if none is).
    pub async fn header(&self) -> Result<HeaderValue, Arc<TokenError>> {
        let mut rx = {
            let mut s = self.inner.state.lock().expect("token lock");
            if let Some((v, until)) = &s.cached
                && Instant::now() < *until
            {
                return Ok(v.clone());
            }
            match &s.fetching {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(None);
                    s.fetching = Some(rx.clone());
                    tokio::spawn(Inner::run(self.inner.clone(), tx));
                    rx
                }
            }
        };
        let waited = match rx.wait_for(Option::is_some).await {
            Ok(outcome) => Some(outcome.clone().expect("waited for Some")),
            Err(_) => None,
        };
        match waited {
            Some(outcome) => outcome,
            None => {
                // The fetch task ended without a word (it cannot, short of a panic):
                // forget it so that the next call starts another.
                let mut s = self.inner.state.lock().expect("token lock");
                if s.fetching.as_ref().is_some_and(|f| f.same_channel(&rx)) {
                    s.fetching = None;
                }
                Err(Arc::new(TokenError::Lost {
                    url: self.inner.url.clone(),
                }))
            }
        }
    }

    /// The upstream refused `used` (a 401): forget it, unless a newer one replaced it.
    pub fn rejected(&self, used: &HeaderValue) {
        let mut s = self.inner.state.lock().expect("token lock");
        if s.cached.as_ref().is_some_and(|(v, _)| v == used) {
            s.cached = None;
        }
    }
}

impl Inner {
    /// One fetch, bounded by `fetch_timeout`; its outcome is cached (a token) and told to
    /// every waiter.
    async fn run(self: Arc<Self>, tx: watch::Sender<Outcome>) {
        let ms = self.fetch_timeout.as_millis() as u64;
        let outcome = match tokio::time::timeout(self.fetch_timeout, self.fetch()).await {
            Ok(Ok((value, expires_in))) => {
                let keep = keep_for(expires_in, self.refresh_before);
                let now = Instant::now();
                let until = now.checked_add(keep).unwrap_or(now);
                let mut s = self.state.lock().expect("token lock");
                s.cached = Some((value.clone(), until));
                s.fetching = None;
                Ok(value)
            }
            Ok(Err(e)) => Err(Arc::new(e)),
            Err(_) => Err(Arc::new(TokenError::Timeout {
                url: self.url.clone(),
                ms,
            })),
        };
        if outcome.is_err() {
            self.state.lock().expect("token lock").fetching = None;
        }
        let _ = tx.send(Some(outcome));
    }

    async fn fetch(&self) -> Result<(HeaderValue, u64), TokenError> {
        let url = || self.url.clone();
        let _slot = self
            .pool
            .slot()
            .await
            .map_err(|_| TokenError::Busy { url: url() })?;
        let mut sender = match self.pool.idle().await {
            Some(s) => s,
            None => self
                .pool
                .connect()
                .await
                .map_err(|source| TokenError::Connect { url: url(), source })?,
        };
        let mut req = Request::new(Full::new(self.form.clone()));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.path.parse().map_err(|_| TokenError::BadAnswer {
            url: url(),
            what: "the token URL's path is not a valid URI path".into(),
        })?;
        let h = req.headers_mut();
        h.insert(header::HOST, self.host.clone());
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let resp = sender
            .send_request(req)
            .await
            .map_err(|source| TokenError::Io { url: url(), source })?;
        let status = resp.status().as_u16();
        let body = match read_body(resp.into_body(), TOKEN_ANSWER_MAX).await {
            Ok(b) => {
                self.pool.put_back(sender);
                b
            }
            Err(super::BodyError::TooLarge) => {
                return Err(TokenError::BadAnswer {
                    url: url(),
                    what: format!("an answer over {TOKEN_ANSWER_MAX} bytes"),
                });
            }
            Err(super::BodyError::Io(source)) => {
                return Err(TokenError::Io { url: url(), source });
            }
        };
        if !(200..300).contains(&status) {
            return Err(TokenError::Refused {
                url: url(),
                status,
                excerpt: excerpt(&redact(&body, &self.secret)),
            });
        }
        let bad = |what: String| TokenError::BadAnswer { url: url(), what };
        let answer: serde_json::Value =
            serde_json::from_slice(&body).map_err(|_| bad("the answer is not JSON".into()))?;
        let Some(token) = answer.get("access_token") else {
            return Err(bad("the answer has no access_token".into()));
        };
        let Some(token) = token.as_str().filter(|t| !t.is_empty()) else {
            return Err(bad("access_token is not a non-empty string".into()));
        };
        let expires_in = expires_in(answer.get("expires_in")).map_err(bad)?;
        let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| bad("access_token holds characters not valid in a header".into()))?;
        value.set_sensitive(true);
        Ok((value, expires_in))
    }
}

/// `body` with the values of [`SECRET_KEYS`] (JSON members or form fields) and any copy of
/// `secret` (as is or form-encoded) replaced by `***`.
pub fn redact(body: &[u8], secret: &str) -> String {
    let mut text = String::from_utf8_lossy(body).into_owned();
    if !secret.is_empty() {
        text = text.replace(secret, "***");
        let encoded = form_encode([("", secret)]);
        let encoded = encoded.trim_start_matches('=');
        if !encoded.is_empty() {
            text = text.replace(encoded, "***");
        }
    }
    for key in SECRET_KEYS {
        let mut from = 0;
        while let Some(at) = text[from..].find(key) {
            let mut i = from + at + key.len();
            let bytes = text.as_bytes();
            // `"key": "value"` or `key=value`.
            while i < bytes.len() && matches!(bytes[i], b'"' | b' ' | b'\t' | b':' | b'=') {
                i += 1;
            }
            let start = i;
            while i < bytes.len() && !matches!(bytes[i], b'"' | b'&' | b',' | b'}' | b' ' | b'\n') {
                i += 1;
            }
            if i > start {
                text.replace_range(start..i, "***");
            }
            from = start + if i > start { 3 } else { 0 };
            if from >= text.len() {
                break;
            }
        }
    }
    text
}

/// The first 200 characters of an answer, printable, for a message.
pub fn excerpt(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(200)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().count() > 200 {
        out.push('…');
    }
    if out.trim().is_empty() {
        out = "(empty body)".into();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_for_caches_short_tokens_and_caps_long_ones() {
        let rb = Duration::from_secs(60);
        assert_eq!(keep_for(3600, rb), Duration::from_secs(3540));
        assert_eq!(keep_for(30, rb), Duration::from_secs(15));
        assert_eq!(keep_for(0, rb), MIN_KEEP);
        assert_eq!(
            keep_for(u64::MAX, rb),
            Duration::from_secs(MAX_EXPIRES_IN - 60)
        );
    }

    #[test]
    fn expires_in_forms() {
        use serde_json::json;
        assert_eq!(expires_in(None), Ok(DEFAULT_EXPIRES_IN));
        assert_eq!(expires_in(Some(&json!(3599.0))), Ok(3599));
        assert_eq!(expires_in(Some(&json!("3599"))), Ok(3599));
        assert_eq!(expires_in(Some(&json!(1e300))), Ok(MAX_EXPIRES_IN));
        assert_eq!(expires_in(Some(&json!(u64::MAX))), Ok(MAX_EXPIRES_IN));
        assert!(
            expires_in(Some(&json!(-5)))
                .unwrap_err()
                .contains("negative")
        );
        assert!(expires_in(Some(&json!([1]))).is_err());
    }

    #[test]
    fn redact_hides_tokens_and_the_secret() {
        let r = redact(
            br#"{"error":"x","access_token": "tok123","refresh_token":"r9","echo":"client_id=a&client_secret=s%2Fb"}"#,
            "s/b",
        );
        assert!(
            !r.contains("tok123") && !r.contains("r9") && !r.contains("s%2Fb"),
            "{r}"
        );
        assert!(r.contains("\"error\":\"x\""), "{r}");
        let r = redact(b"bad: the secret hunter2 is wrong", "hunter2");
        assert!(!r.contains("hunter2"), "{r}");
    }
}
