//! The static files, compiled in: htmx and its server-sent-events extension (vendored from
//! npm, see assets/VENDORED) and the style sheet.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

use crate::http::{Body, Resp};

const FILES: &[(&str, &str, &[u8])] = &[
    (
        "htmx.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/htmx.min.js"),
    ),
    (
        "htmx-sse.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/htmx-sse.min.js"),
    ),
    (
        "dashboard.css",
        "text/css; charset=utf-8",
        include_bytes!("../assets/dashboard.css"),
    ),
];

/// `/static/{name}`: the file, cached for a day (its name does not change between builds,
/// so not longer).
pub fn serve(name: &str) -> Resp {
    match FILES.iter().find(|(n, _, _)| *n == name) {
        Some((_, ct, bytes)) => {
            let mut r = Response::new(Body::Full(Full::new(Bytes::from_static(bytes))));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            r.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=86400"),
            );
            r
        }
        None => crate::http::text(StatusCode::NOT_FOUND, "no such file"),
    }
}
