//! The dashboard's only way to the servers: their admin API over HTTP, with the signed-in
//! user's own bearer token. An answer is JSON; an error status becomes an [`ApiError`]
//! carrying the server's `error` message, which the pages show as it is (next to the field
//! a form sent, or at the top of the page).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::time::Duration;

/// How long one admin API call may take before the page says so.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The largest answer read (a module's source, a long audit page).
const MAX_ANSWER: usize = 16 << 20;

#[derive(Debug, Clone)]
pub struct ApiError {
    /// The answer's status; `None` when no answer came (unreachable, timed out).
    pub status: Option<u16>,
    pub message: String,
    /// The whole error document (a deploy's traceback, a validation's field).
    pub doc: Option<Value>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(s) => write!(f, "{} ({s})", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// One server's admin API, called as one identity.
#[derive(Clone)]
pub struct Api {
    /// `host:port`
    pub authority: String,
    pub token: String,
    /// Set when the server answers 401 (the token revoked): the session it belongs to ends.
    pub on_401: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("Api")
            .field("authority", &self.authority)
            .finish_non_exhaustive()
    }
}

impl Api {
    pub fn new(authority: &str, token: &str) -> Api {
        Api {
            authority: authority.to_owned(),
            token: token.to_owned(),
            on_401: None,
        }
    }

    /// `GET path` as JSON.
    pub async fn get(&self, path: &str) -> Result<Value, ApiError> {
        self.call("GET", path, Bytes::new(), "application/json")
            .await
    }

    /// `method path` with a JSON body (none for `null`).
    pub async fn send(&self, method: &str, path: &str, body: &Value) -> Result<Value, ApiError> {
        let bytes = if body.is_null() {
            Bytes::new()
        } else {
            Bytes::from(body.to_string())
        };
        self.call(method, path, bytes, "application/json").await
    }

    /// One call; a 2xx answer's JSON (`null` for an empty one), else the error.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Bytes,
        content_type: &str,
    ) -> Result<Value, ApiError> {
        let (status, bytes, _) = self.raw(method, path, body, content_type).await?;
        if status == 401
            && let Some(flag) = &self.on_401
        {
            flag.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let doc: Option<Value> = if bytes.is_empty() {
            Some(Value::Null)
        } else {
            serde_json::from_slice(&bytes).ok()
        };
        if (200..300).contains(&status) {
            return doc.ok_or_else(|| ApiError {
                status: Some(status),
                message: "the server's answer is not JSON".into(),
                doc: None,
            });
        }
        let message = doc
            .as_ref()
            .and_then(|d| d.get("error"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| {
                String::from_utf8_lossy(&bytes)
                    .trim()
                    .chars()
                    .take(500)
                    .collect()
            });
        Err(ApiError {
            status: Some(status),
            message,
            doc,
        })
    }

    /// One call: the status, the body and the headers as they came.
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        body: Bytes,
        content_type: &str,
    ) -> Result<(u16, Bytes, hyper::HeaderMap), ApiError> {
        let unreachable = |e: String| ApiError {
            status: None,
            message: format!("server {} did not answer: {e}", self.authority),
            doc: None,
        };
        let work = async {
            let stream = tokio::net::TcpStream::connect(&self.authority)
                .await
                .map_err(|e| e.to_string())?;
            let _ = stream.set_nodelay(true);
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let req = hyper::Request::builder()
                .method(method)
                .uri(path)
                .header("host", &self.authority)
                .header("authorization", format!("Bearer {}", self.token))
                .header("content-type", content_type)
                .body(Full::new(body))
                .map_err(|e| e.to_string())?;
            let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let limited = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER);
            let bytes = limited
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>((status, bytes, headers))
        };
        match tokio::time::timeout(TIMEOUT, work).await {
            Ok(Ok(x)) => Ok(x),
            Ok(Err(e)) => Err(unreachable(e)),
            Err(_) => Err(unreachable(format!(
                "no answer within {}s",
                TIMEOUT.as_secs()
            ))),
        }
    }
}

/// Whether `name` is `.` or `..`: a browser resolves such a path segment (even encoded)
/// before sending, so no page path can carry it; the pages offer no action on such names.
pub fn dot_segment(name: &str) -> bool {
    name == "." || name == ".."
}

/// `s` percent-encoded for one path segment or query value (`.` and `..` wholly, so that
/// no path normalisation can read them as steps).
pub fn enc(s: &str) -> String {
    if s == "." || s == ".." {
        return s.replace('.', "%2E");
    }
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn enc_keeps_unreserved_only() {
        assert_eq!(super::enc("/echo x"), "%2Fecho%20x");
        assert_eq!(super::enc("demo.echo"), "demo.echo");
        assert_eq!(super::enc(".."), "%2E%2E");
    }
}
