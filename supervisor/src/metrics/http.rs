//! Metrics of the HTTP edge: requests by channel, method and status class, latency, in flight, refusals by reason.
//!
//! Labels come from bounded sets only: the channel's name (or its URL pattern when it has
//! none; [`NO_CHANNEL`] for a request no channel took), one of eight method classes, one of
//! five status classes, one of the fixed refusal reasons. Never the path, a cid or anything
//! else a client sent.
//!
//! The request path allocates nothing for labels: each channel of the routing table carries
//! a [`ChannelHandles`] (built with the table), whose counters and histogram are looked up in
//! the families once, on their first use, and kept; after that a request costs a few relaxed
//! atomic additions.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::fmt::Write;
use std::sync::OnceLock;
use std::time::Duration;

use crate::metrics::histogram::DurationHistogram;

/// The `channel` label of a request no channel took (`/healthz`, a 404, a refused head).
pub const NO_CHANNEL: &str = "(none)";

/// A request method, in one of eight classes (anything else is `other`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MethodClass {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
    Options,
    Other,
}

impl MethodClass {
    const ALL: usize = 8;

    pub fn of(method: &hyper::Method) -> MethodClass {
        match *method {
            hyper::Method::GET => MethodClass::Get,
            hyper::Method::HEAD => MethodClass::Head,
            hyper::Method::POST => MethodClass::Post,
            hyper::Method::PUT => MethodClass::Put,
            hyper::Method::PATCH => MethodClass::Patch,
            hyper::Method::DELETE => MethodClass::Delete,
            hyper::Method::OPTIONS => MethodClass::Options,
            _ => MethodClass::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MethodClass::Get => "GET",
            MethodClass::Head => "HEAD",
            MethodClass::Post => "POST",
            MethodClass::Put => "PUT",
            MethodClass::Patch => "PATCH",
            MethodClass::Delete => "DELETE",
            MethodClass::Options => "OPTIONS",
            MethodClass::Other => "other",
        }
    }
}

impl EncodeLabelValue for MethodClass {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// A response status in its class, `1xx` to `5xx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatusClass {
    Informational,
    Success,
    Redirection,
    ClientError,
    ServerError,
}

impl StatusClass {
    const ALL: usize = 5;

    /// The class of `status`; a status outside 100..=599 (hyper sends none) counts as `5xx`.
    pub fn of(status: u16) -> StatusClass {
        match status {
            100..=199 => StatusClass::Informational,
            200..=299 => StatusClass::Success,
            300..=399 => StatusClass::Redirection,
            400..=499 => StatusClass::ClientError,
            _ => StatusClass::ServerError,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StatusClass::Informational => "1xx",
            StatusClass::Success => "2xx",
            StatusClass::Redirection => "3xx",
            StatusClass::ClientError => "4xx",
            StatusClass::ServerError => "5xx",
        }
    }
}

impl EncodeLabelValue for StatusClass {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// Why the edge answered a request itself instead of a service: each a fixed label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalReason {
    /// 400: the head gate refused the request head (framing, as the proxy does).
    BadHead,
    /// 431: the head gate or the header limit (`http.max_header_bytes`).
    HeadersTooLarge,
    /// 400: the body could not be read, or its JSON nests too deep.
    BadBody,
    /// 401: the channel's credentials check.
    Unauthorized,
    /// 403: the channel's allow list or credentials check.
    Forbidden,
    /// 404: no channel for the path.
    NotFound,
    /// 405: a channel for the path, not for the method.
    MethodNotAllowed,
    /// 413: the body is over `http.max_body_bytes` (or the IPC frame limit).
    BodyTooLarge,
    /// 429: the channel's rate limit.
    RateLimited,
    /// 503: every worker busy and the queue full, or no worker free before the deadline.
    Busy,
    /// 503: the worker died with the request in flight.
    WorkerDied,
    /// 504: the request's deadline passed.
    Deadline,
    /// 500: the channel's checks are not compiled (never served unchecked).
    Unchecked,
}

impl RefusalReason {
    const ALL: [RefusalReason; 13] = [
        RefusalReason::BadHead,
        RefusalReason::HeadersTooLarge,
        RefusalReason::BadBody,
        RefusalReason::Unauthorized,
        RefusalReason::Forbidden,
        RefusalReason::NotFound,
        RefusalReason::MethodNotAllowed,
        RefusalReason::BodyTooLarge,
        RefusalReason::RateLimited,
        RefusalReason::Busy,
        RefusalReason::WorkerDied,
        RefusalReason::Deadline,
        RefusalReason::Unchecked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::BadHead => "bad_head",
            RefusalReason::HeadersTooLarge => "headers_too_large",
            RefusalReason::BadBody => "bad_body",
            RefusalReason::Unauthorized => "unauthorized",
            RefusalReason::Forbidden => "forbidden",
            RefusalReason::NotFound => "not_found",
            RefusalReason::MethodNotAllowed => "method_not_allowed",
            RefusalReason::BodyTooLarge => "body_too_large",
            RefusalReason::RateLimited => "rate_limited",
            RefusalReason::Busy => "busy",
            RefusalReason::WorkerDied => "worker_died",
            RefusalReason::Deadline => "deadline",
            RefusalReason::Unchecked => "unchecked",
        }
    }

    /// The reason of a head the head gate refused with `status`.
    pub fn of_head(status: u16) -> RefusalReason {
        if status == 431 {
            RefusalReason::HeadersTooLarge
        } else {
            RefusalReason::BadHead
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    channel: String,
    method: MethodClass,
    status: StatusClass,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ChannelLabel {
    channel: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

type RequestCounters = [[OnceLock<Counter>; StatusClass::ALL]; MethodClass::ALL];

/// One channel's series, looked up once each and kept (see the module's doc). Built by the
/// routing table for every channel it holds; cheap to build (nothing is registered until a
/// request of that class arrives).
#[derive(Debug)]
pub struct ChannelHandles {
    label: String,
    requests: RequestCounters,
    duration: OnceLock<DurationHistogram>,
}

impl ChannelHandles {
    /// The handles of the channel labelled `label` (its name, or its URL pattern).
    pub fn new(label: &str) -> ChannelHandles {
        ChannelHandles {
            label: label.to_owned(),
            requests: std::array::from_fn(|_| std::array::from_fn(|_| OnceLock::new())),
            duration: OnceLock::new(),
        }
    }

    pub fn label(&self) -> &str {
        &self.label
    }
}

/// The HTTP edge's figures.
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<ChannelLabel, DurationHistogram>,
    in_flight: Gauge,
    refused: [Counter; RefusalReason::ALL.len()],
    /// The handles of requests no channel took.
    none: ChannelHandles,
}

impl HttpMetrics {
    pub fn register(registry: &mut Registry) -> HttpMetrics {
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by channel (name, or URL pattern; \"(none)\" when no channel took it), method class and status class",
            requests.clone(),
        );
        let duration = Family::<ChannelLabel, DurationHistogram>::default();
        registry.register(
            "http_request_duration_seconds",
            "Time from the request head to the response, by channel",
            duration.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "http_requests_in_flight",
            "HTTP requests being handled now",
            in_flight.clone(),
        );
        let refused_family = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "http_refused",
            "HTTP requests the edge answered itself, by reason",
            refused_family.clone(),
        );
        // Every reason is there from the start (0): a rate() over it needs no first refusal.
        let refused = RefusalReason::ALL
            .map(|r| refused_family.get_or_create_owned(&ReasonLabel { reason: r.as_str() }));
        HttpMetrics {
            requests,
            duration,
            in_flight,
            refused,
            none: ChannelHandles::new(NO_CHANNEL),
        }
    }

    /// Counts an answered request of `channel` (None: no channel took it) and its duration.
    pub fn record(
        &self,
        channel: Option<&ChannelHandles>,
        method: MethodClass,
        status: u16,
        elapsed: Duration,
    ) {
        let ch = channel.unwrap_or(&self.none);
        let status = StatusClass::of(status);
        ch.requests[method as usize][status as usize]
            .get_or_init(|| {
                self.requests.get_or_create_owned(&RequestLabels {
                    channel: ch.label.clone(),
                    method,
                    status,
                })
            })
            .inc();
        ch.duration
            .get_or_init(|| {
                self.duration.get_or_create_owned(&ChannelLabel {
                    channel: ch.label.clone(),
                })
            })
            .observe(elapsed);
    }

    /// Counts a request the edge answered itself.
    pub fn refused(&self, reason: RefusalReason) {
        self.refused[reason as usize].inc();
    }

    /// Counts a request in flight until the guard is dropped.
    pub fn in_flight(&self) -> InFlight<'_> {
        self.in_flight.inc();
        InFlight(&self.in_flight)
    }
}

/// A request in flight (see [`HttpMetrics::in_flight`]).
pub struct InFlight<'a>(&'a Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_classes() {
        use hyper::Method;
        let cases = [
            (Method::GET, "GET"),
            (Method::HEAD, "HEAD"),
            (Method::POST, "POST"),
            (Method::PUT, "PUT"),
            (Method::PATCH, "PATCH"),
            (Method::DELETE, "DELETE"),
            (Method::OPTIONS, "OPTIONS"),
            (Method::TRACE, "other"),
            (Method::CONNECT, "other"),
            (Method::from_bytes(b"PROPFIND").unwrap(), "other"),
        ];
        for (m, class) in cases {
            assert_eq!(MethodClass::of(&m).as_str(), class, "{m}");
        }
    }

    #[test]
    fn status_classes() {
        for (s, class) in [
            (100, "1xx"),
            (101, "1xx"),
            (200, "2xx"),
            (204, "2xx"),
            (299, "2xx"),
            (301, "3xx"),
            (404, "4xx"),
            (429, "4xx"),
            (499, "4xx"),
            (500, "5xx"),
            (504, "5xx"),
            (599, "5xx"),
            (600, "5xx"),
            (0, "5xx"),
        ] {
            assert_eq!(StatusClass::of(s).as_str(), class, "{s}");
        }
    }

    #[test]
    fn refusal_reasons_are_distinct_fixed_strings() {
        let mut seen = std::collections::HashSet::new();
        for (i, r) in RefusalReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "ALL is in declaration order");
            assert!(seen.insert(r.as_str()), "{r:?}");
            assert!(
                r.as_str()
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_')
            );
        }
        assert_eq!(RefusalReason::of_head(431), RefusalReason::HeadersTooLarge);
        assert_eq!(RefusalReason::of_head(400), RefusalReason::BadHead);
    }

    #[test]
    fn series_are_per_channel_method_and_status_class() {
        let mut registry = Registry::with_prefix("oxbus");
        let m = HttpMetrics::register(&mut registry);
        let echo = ChannelHandles::new("echo");
        m.record(
            Some(&echo),
            MethodClass::Post,
            200,
            Duration::from_millis(2),
        );
        m.record(
            Some(&echo),
            MethodClass::Post,
            201,
            Duration::from_millis(2),
        );
        m.record(None, MethodClass::Get, 404, Duration::from_micros(50));
        m.refused(RefusalReason::NotFound);
        {
            let _a = m.in_flight();
            let _b = m.in_flight();
            assert_eq!(m.in_flight.get(), 2);
        }
        assert_eq!(m.in_flight.get(), 0);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        assert!(
            out.contains(
                "oxbus_http_requests_total{channel=\"echo\",method=\"POST\",status=\"2xx\"} 2\n"
            ),
            "{out}"
        );
        assert!(
            out.contains(
                "oxbus_http_requests_total{channel=\"(none)\",method=\"GET\",status=\"4xx\"} 1\n"
            ),
            "{out}"
        );
        assert!(
            out.contains("oxbus_http_request_duration_seconds_count{channel=\"echo\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("oxbus_http_refused_total{reason=\"not_found\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("oxbus_http_refused_total{reason=\"rate_limited\"} 0\n"),
            "{out}"
        );
        assert!(out.contains("oxbus_http_requests_in_flight 0\n"), "{out}");
    }
}
