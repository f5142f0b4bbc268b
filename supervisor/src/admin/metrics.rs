//! `GET /metrics`: the server's Prometheus metrics (`crate::metrics`). It needs no admin
//! token: a Prometheus server scrapes it. With `admin.metrics_token` set it needs that token
//! instead (`Authorization: Bearer <it>`), never the admin one; with `metrics.enabled = false`
//! it answers 404 saying so.
//!
//! Two flavours of one encoding, negotiated as Prometheus's own client libraries do: a
//! client that accepts `application/openmetrics-text` (a Prometheus server does, first) gets
//! what `prometheus-client` writes, OpenMetrics 1.0 text ending in `# EOF`; any other client
//! (curl, `promtool check metrics`) gets the Prometheus text format 0.0.4. The two differ
//! only in a counter's `# HELP`/`# TYPE` lines: OpenMetrics names the family without the
//! `_total` its samples carry, the 0.0.4 format names it as its samples are named (else
//! promtool sees samples of an undeclared family, "no help text"). Every sample line is the
//! crate's, in both.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use super::{Body, Ctx, error};

/// The path, on the admin listener.
pub(super) const PATH: &str = "/metrics";

/// What `prometheus_client::encoding::text::encode` writes: OpenMetrics 1.0 text.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The Prometheus text format ([`prometheus_text`]).
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Answers a request for [`PATH`].
pub(super) fn serve<B>(req: &Request<B>, cx: &Ctx) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "method {} not allowed for /metrics; allowed: GET",
                req.method()
            ),
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    if !cx.metrics.enabled() {
        return error(
            StatusCode::NOT_FOUND,
            "metrics are off on this server (metrics.enabled = false in its settings)",
        );
    }
    if let Some(token) = &cx.settings.admin.metrics_token {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if !presented.is_some_and(|t| same(t.as_bytes(), token.as_str().as_bytes())) {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token (Authorization: Bearer <admin.metrics_token>)",
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    let openmetrics = req
        .headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    match cx.metrics.render() {
        Ok(text) => {
            let (body, content_type) = if openmetrics {
                (text, OPENMETRICS)
            } else {
                (prometheus_text(&text), PROMETHEUS_TEXT)
            };
            let mut r = Response::new(Full::new(Bytes::from(body)));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            r
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the metrics: {e}"),
        ),
    }
}

/// The Prometheus text format 0.0.4 of `openmetrics` (the crate's output): each counter
/// family's `# HELP` and `# TYPE` lines name it as its samples are named (`<name>_total`);
/// everything else is as the crate wrote it (`# UNIT` and `# EOF` are comments there).
fn prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(l.trim_end()),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn prometheus_text_names_counter_families_as_their_samples() {
        let om = "# HELP oxbus_a Requests, by x.\n# TYPE oxbus_a counter\noxbus_a_total{x=\"1\"} 2\n\
                  # HELP oxbus_g In flight.\n# TYPE oxbus_g gauge\noxbus_g 0\n\
                  # HELP oxbus_d_seconds Time.\n# TYPE oxbus_d_seconds histogram\noxbus_d_seconds_count 1\n# EOF\n";
        assert_eq!(
            super::prometheus_text(om),
            "# HELP oxbus_a_total Requests, by x.\n# TYPE oxbus_a_total counter\noxbus_a_total{x=\"1\"} 2\n\
             # HELP oxbus_g In flight.\n# TYPE oxbus_g gauge\noxbus_g 0\n\
             # HELP oxbus_d_seconds Time.\n# TYPE oxbus_d_seconds histogram\noxbus_d_seconds_count 1\n# EOF\n"
        );
    }

    #[test]
    fn token_comparison() {
        assert!(super::same(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!super::same(b"0123456789abcdef", b"0123456789abcdeg"));
        assert!(!super::same(b"0123456789abcdef", b"0123456789abcde"));
        assert!(!super::same(b"", b"x"));
    }
}
