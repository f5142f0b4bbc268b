//! `GET /metrics`: the server's Prometheus metrics (`crate::metrics`). It needs no admin
//! token: a Prometheus server scrapes it. With `admin.metrics_token` set it needs that token
//! instead (`Authorization: Bearer <it>`), never the admin one; with `metrics.enabled = false`
//! it answers 404 saying so.
//!
//! Two flavours of one encoding, negotiated by `Accept` ([`wants_openmetrics`]): a client
//! that prefers `application/openmetrics-text` (a Prometheus server does) gets what
//! `prometheus-client` writes, OpenMetrics 1.0 text ending in `# EOF`; any other client
//! (curl, `promtool check metrics`) gets the Prometheus text format 0.0.4. The two differ
//! only in a counter's `# HELP`/`# TYPE` lines: OpenMetrics names the family without the
//! `_total` its samples carry, the 0.0.4 format names it as its samples are named (else
//! promtool sees samples of an undeclared family, "no help text"). Every sample line is the
//! crate's, in both.
//!
//! The registry is encoded on a blocking thread (`spawn_blocking`), never on a runtime
//! thread: its collectors read `/proc/<pid>/statm` per worker and run each cache's pending
//! maintenance, all under the registry's lock.

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
pub(super) async fn serve<B>(req: &Request<B>, cx: &Ctx) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        // The shape of a channel's 405 (edge/http.rs), less the cid the admin port has not.
        let mut r = super::reply(
            StatusCode::METHOD_NOT_ALLOWED,
            serde_json::json!({
                "error": format!(
                    "method {} not allowed for /metrics; allowed: {ALLOWED}",
                    req.method()
                ),
                "allowed": ALLOWED.split(", ").collect::<Vec<_>>(),
            }),
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(ALLOWED));
        return r;
    }
    if !cx.metrics.enabled() {
        return error(
            StatusCode::NOT_FOUND,
            "metrics are off on this server (metrics.enabled = false in its settings)",
        );
    }
    if let Some(token) = &cx.settings.admin.metrics_token {
        let presented = bearer(req.headers());
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
    let openmetrics = wants_openmetrics(req.headers());
    let metrics = cx.metrics.clone();
    let rendered = tokio::task::spawn_blocking(move || {
        let text = metrics.render()?;
        Ok::<_, std::fmt::Error>(if openmetrics {
            text
        } else {
            prometheus_text(&text)
        })
    })
    .await;
    match rendered {
        Ok(Ok(body)) => {
            let content_type = if openmetrics {
                OPENMETRICS
            } else {
                PROMETHEUS_TEXT
            };
            let mut r = Response::new(Full::new(Bytes::from(body)));
            let h = r.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            h.insert(header::VARY, HeaderValue::from_static("Accept"));
            r
        }
        Ok(Err(e)) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the metrics: {e}"),
        ),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the metrics encoding did not finish: {e}"),
        ),
    }
}

/// The methods [`PATH`] answers, as its 405 says and its `Allow` lists them.
const ALLOWED: &str = "GET, HEAD";

/// The credentials of an `Authorization: Bearer <token>` header; the scheme's name is
/// case-insensitive (RFC 9110 §11.1), the token is taken as sent.
fn bearer(headers: &hyper::HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = v.split_once([' ', '\t'])?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Whether the client prefers OpenMetrics: its `Accept` names `application/openmetrics-text`
/// with a q above 0 and at least the q that `text/plain` gets (from `text/plain`, else
/// `text/*`, else `*/*`: the most specific range that matches). No `Accept`, or one that
/// does not name OpenMetrics (`*/*` included), gets the text format.
fn wants_openmetrics(headers: &hyper::HeaderMap) -> bool {
    // (q, specificity) of the best range matching each flavour; specificity 0 = no match.
    let mut om = 0.0f32;
    let mut text = (0.0f32, 0u8);
    for value in headers.get_all(header::ACCEPT) {
        let Ok(value) = value.to_str() else { continue };
        for range in value.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim();
            let q = parts
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .map_or(Some(1.0), |(_, v)| v.trim().parse::<f32>().ok())
                // A q that does not parse is no preference at all.
                .filter(|q| q.is_finite())
                .map_or(0.0, |q| q.clamp(0.0, 1.0));
            let specificity = if media.eq_ignore_ascii_case("application/openmetrics-text") {
                om = om.max(q);
                continue;
            } else if media.eq_ignore_ascii_case("text/plain") {
                3
            } else if media.eq_ignore_ascii_case("text/*") {
                2
            } else if media == "*/*" {
                1
            } else {
                continue;
            };
            if specificity > text.1 {
                text = (q, specificity);
            } else if specificity == text.1 {
                text.0 = text.0.max(q);
            }
        }
    }
    om > 0.0 && om >= text.0
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
    use hyper::HeaderMap;
    use hyper::header::{ACCEPT, AUTHORIZATION, HeaderValue};

    fn accept(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(ACCEPT, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn openmetrics_only_when_preferred() {
        let om = |v: &[&str]| super::wants_openmetrics(&accept(v));
        // What Prometheus sends.
        assert!(om(&[
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        ]));
        assert!(om(&["application/openmetrics-text"]));
        assert!(om(&["Application/OpenMetrics-Text; version=1.0.0"]));
        assert!(om(&["text/plain;q=0.5", "application/openmetrics-text"]));
        // A tie goes to OpenMetrics.
        assert!(om(&["text/plain, application/openmetrics-text"]));
        // The most specific range decides text/plain's q.
        assert!(om(&[
            "*/*, text/plain;q=0.2, application/openmetrics-text;q=0.5"
        ]));
        assert!(om(&["application/openmetrics-text;q=0.5, text/*;q=0.4"]));

        assert!(!om(&[]));
        assert!(!om(&["*/*"]));
        assert!(!om(&["text/plain"]));
        assert!(!om(&["application/openmetrics-text;q=0"]));
        assert!(!om(&["application/openmetrics-text; q=0.0, text/plain"]));
        assert!(!om(&["application/openmetrics-text;q=0.5, text/plain"]));
        assert!(!om(&["application/openmetrics-text;q=0.5, */*"]));
        assert!(!om(&["application/openmetrics-text;q=0.5", "text/*;q=0.6"]));
        assert!(!om(&["application/openmetrics-text;q=nope"]));
        // Not a media range of its own.
        assert!(!om(&["application/openmetrics-textual"]));
        assert!(!om(&["text/plain; note=\"application/openmetrics-text\""]));
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        let auth = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            super::bearer(&h).map(str::to_owned)
        };
        for v in [
            "Bearer abc",
            "bearer abc",
            "BEARER abc",
            "Bearer   abc ",
            "bEaReR\tabc",
        ] {
            assert_eq!(auth(v).as_deref(), Some("abc"), "{v:?}");
        }
        for v in ["Basic abc", "Bearer", "Bearer ", "Bearerabc", "abc"] {
            assert_eq!(auth(v), None, "{v:?}");
        }
        assert_eq!(super::bearer(&HeaderMap::new()), None);
    }
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
