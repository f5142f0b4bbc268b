//! A REST connection's credentials: the header basic / apikey / bearer auth adds, and the
//! OAuth2 client-credentials token (fetched on its own small pool, cached until
//! `expires_in - refresh_before_s`, one fetch at a time, dropped after a 401).

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Method, Request};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::pool::{ConnectError, Pool};
use super::read_body;
use super::url::{Address, form_encode};

/// The most of a token endpoint's answer read.
const TOKEN_ANSWER_MAX: u64 = 64 * 1024;
/// A token whose answer gives no `expires_in` is kept this long (or until a 401).
const DEFAULT_EXPIRES_IN: u64 = 3600;

/// Why no token could be had.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token endpoint {url}: {source}")]
    Connect { url: String, source: ConnectError },
    #[error("token endpoint {url}: no free connection")]
    Busy { url: String },
    #[error("token endpoint {url}: the connection broke: {source}")]
    Io { url: String, source: hyper::Error },
    #[error("token endpoint {url} answered HTTP {status}: {excerpt}")]
    Refused {
        url: String,
        status: u16,
        excerpt: String,
    },
    #[error("token endpoint {url} answered no usable access_token: {excerpt}")]
    BadAnswer { url: String, excerpt: String },
}

/// The header one call carries.
#[derive(Debug)]
pub enum Auth {
    None,
    /// Basic, API key, bearer: the same header on every call.
    Static(HeaderName, HeaderValue),
    OAuth2(Box<OAuth2>),
}

/// OAuth2 client credentials.
#[derive(Debug)]
pub struct OAuth2 {
    /// The token URL, for messages.
    url: String,
    host: HeaderValue,
    path: String,
    pool: Pool,
    /// The form body of the token request (holds the client secret).
    form: Bytes,
    refresh_before: Duration,
    /// The cached `Authorization` value and until when it is used.
    cached: Mutex<Option<(HeaderValue, Instant)>>,
    /// Held while a token is fetched: concurrent calls wait for that one fetch.
    fetching: tokio::sync::Mutex<()>,
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
            url: url.to_owned(),
            host,
            path,
            pool,
            form: Bytes::from(form_encode(pairs)),
            refresh_before: Duration::from_secs(refresh_before_s),
            cached: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    fn cached(&self) -> Option<HeaderValue> {
        let c = self.cached.lock().expect("token lock");
        match &*c {
            Some((v, until)) if Instant::now() < *until => Some(v.clone()),
            _ => None,
        }
    }

    /// The `Authorization` value: the cached token, or a new one (a single fetch shared by
    /// every call that needs it meanwhile).
    pub async fn header(&self) -> Result<HeaderValue, TokenError> {
        if let Some(v) = self.cached() {
            return Ok(v);
        }
        let _one = self.fetching.lock().await;
        if let Some(v) = self.cached() {
            return Ok(v);
        }
        let (value, expires_in) = self.fetch().await?;
        let keep = Duration::from_secs(expires_in).saturating_sub(self.refresh_before);
        *self.cached.lock().expect("token lock") = Some((value.clone(), Instant::now() + keep));
        Ok(value)
    }

    /// The upstream refused `used` (a 401): forget it, unless a newer one replaced it.
    pub fn rejected(&self, used: &HeaderValue) {
        let mut c = self.cached.lock().expect("token lock");
        if c.as_ref().is_some_and(|(v, _)| v == used) {
            *c = None;
        }
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
            excerpt: "the token URL's path is not a valid URI path".into(),
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
                    excerpt: format!("an answer over {TOKEN_ANSWER_MAX} bytes"),
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
                excerpt: excerpt(&body),
            });
        }
        #[derive(serde::Deserialize)]
        struct Answer {
            access_token: String,
            #[serde(default)]
            expires_in: Option<serde_json::Value>,
        }
        let bad = || TokenError::BadAnswer {
            url: url(),
            excerpt: excerpt(&body),
        };
        let a: Answer = serde_json::from_slice(&body).map_err(|_| bad())?;
        // Some servers send expires_in as a string.
        let expires_in = match &a.expires_in {
            None => DEFAULT_EXPIRES_IN,
            Some(serde_json::Value::Number(n)) => n.as_u64().ok_or_else(bad)?,
            Some(serde_json::Value::String(s)) => s.parse().map_err(|_| bad())?,
            Some(_) => return Err(bad()),
        };
        let value =
            HeaderValue::from_str(&format!("Bearer {}", a.access_token)).map_err(|_| bad())?;
        Ok((value, expires_in))
    }
}

/// The first 200 characters of an answer, printable, for a message.
pub fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
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
