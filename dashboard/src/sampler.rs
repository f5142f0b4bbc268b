//! The overview's charts: every [`EVERY`] the dashboard reads each server's `/metrics` (the
//! Prometheus text the admin listener serves; with `metrics_token_file` when the servers
//! set `admin.metrics_token`) and keeps the last hour of three figures per server: requests
//! per second, the share of 5xx answers, and the 99th percentile of request durations
//! (from the histogram's bucket deltas between two samples). Nothing else is read there.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::api::Api;

pub const EVERY: Duration = Duration::from_secs(10);
/// One hour of samples.
const KEEP: usize = 360;

/// What one scrape of one server gave: cumulative counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape {
    pub requests: f64,
    pub errors: f64,
    /// (upper bound in seconds, cumulative count), sorted by bound, summed over channels.
    pub buckets: Vec<(f64, f64)>,
}

/// One point of a chart: unix seconds and the figures over the interval before it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub at: u64,
    pub rps: f64,
    pub error_rate: f64,
    /// Seconds; `None` when no request finished in the interval.
    pub p99: Option<f64>,
}

#[derive(Debug, Default)]
struct Series {
    last: Option<(Scrape, SystemTime)>,
    points: VecDeque<Point>,
    /// Why the last scrape failed, if it did.
    error: Option<String>,
}

#[derive(Debug)]
pub struct Sampler {
    servers: Vec<String>,
    token: Option<String>,
    series: Mutex<Vec<Series>>,
}

impl Sampler {
    pub fn new(servers: Vec<String>, token: Option<String>) -> Sampler {
        let series = servers.iter().map(|_| Series::default()).collect();
        Sampler {
            servers,
            token,
            series: Mutex::new(series),
        }
    }

    /// Scrapes every server every [`EVERY`], until the process ends.
    pub async fn run(self: std::sync::Arc<Self>) {
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for (i, server) in self.servers.iter().enumerate() {
                let api = Api::new(server, self.token.as_deref().unwrap_or(""));
                let got = api
                    .raw("GET", "/metrics", bytes::Bytes::new(), "text/plain")
                    .await;
                let now = SystemTime::now();
                let mut all = self.series.lock().expect("series");
                let s = &mut all[i];
                match got {
                    Ok((200, body, _)) => {
                        let scrape = parse(&String::from_utf8_lossy(&body));
                        s.error = None;
                        if let Some((prev, at)) = &s.last
                            && let Some(p) = point(prev, *at, &scrape, now)
                        {
                            s.points.push_back(p);
                            while s.points.len() > KEEP {
                                s.points.pop_front();
                            }
                        }
                        s.last = Some((scrape, now));
                    }
                    Ok((status, _, _)) => {
                        s.error = Some(format!("/metrics answered {status}"));
                        s.last = None;
                    }
                    Err(e) => {
                        s.error = Some(e.message);
                        s.last = None;
                    }
                }
            }
        }
    }

    /// Each server's points (oldest first) and its last scrape error.
    pub fn series(&self) -> Vec<(String, Vec<Point>, Option<String>)> {
        let all = self.series.lock().expect("series");
        self.servers
            .iter()
            .zip(all.iter())
            .map(|(name, s)| {
                (
                    name.clone(),
                    s.points.iter().copied().collect(),
                    s.error.clone(),
                )
            })
            .collect()
    }
}

fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    labels.split(',').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"'))
    })
}

/// The request counters of one `/metrics` text.
pub fn parse(text: &str) -> Scrape {
    let mut s = Scrape::default();
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((name_labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match name_labels.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (name_labels, ""),
        };
        match name {
            "oxbus_http_requests_total" => {
                s.requests += value;
                if label(labels, "status") == Some("5xx") {
                    s.errors += value;
                }
            }
            "oxbus_http_request_duration_seconds_bucket" => {
                let le = match label(labels, "le") {
                    Some("+Inf") => f64::INFINITY,
                    Some(v) => match v.parse() {
                        Ok(x) => x,
                        Err(_) => continue,
                    },
                    None => continue,
                };
                match buckets.iter_mut().find(|(b, _)| *b == le) {
                    Some((_, c)) => *c += value,
                    None => buckets.push((le, value)),
                }
            }
            _ => {}
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    s.buckets = buckets;
    s
}

/// The point between two scrapes; `None` when a counter went back (the server restarted).
pub fn point(prev: &Scrape, prev_at: SystemTime, now: &Scrape, at: SystemTime) -> Option<Point> {
    let secs = at.duration_since(prev_at).ok()?.as_secs_f64();
    if secs <= 0.0 || now.requests < prev.requests {
        return None;
    }
    let n = now.requests - prev.requests;
    let e = (now.errors - prev.errors).max(0.0);
    let deltas: Vec<(f64, f64)> = now
        .buckets
        .iter()
        .map(|(le, c)| {
            let before = prev
                .buckets
                .iter()
                .find(|(b, _)| b == le)
                .map_or(0.0, |(_, c)| *c);
            (*le, (c - before).max(0.0))
        })
        .collect();
    let total = deltas.last().map_or(0.0, |(_, c)| *c);
    let p99 = (total > 0.0)
        .then(|| {
            deltas
                .iter()
                .find(|(_, c)| *c >= total * 0.99)
                .map(|(le, _)| *le)
        })
        .flatten();
    Some(Point {
        at: at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        rps: n / secs,
        error_rate: if n > 0.0 { e / n } else { 0.0 },
        p99,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "# HELP x\n\
        oxbus_http_requests_total{channel=\"echo\",method=\"POST\",status=\"2xx\"} 90\n\
        oxbus_http_requests_total{channel=\"echo\",method=\"POST\",status=\"5xx\"} 10\n\
        oxbus_http_request_duration_seconds_bucket{channel=\"echo\",le=\"0.001\"} 50\n\
        oxbus_http_request_duration_seconds_bucket{channel=\"echo\",le=\"0.01\"} 99\n\
        oxbus_http_request_duration_seconds_bucket{channel=\"echo\",le=\"+Inf\"} 100\n";

    #[test]
    fn counters_and_buckets_are_summed() {
        let s = parse(A);
        assert_eq!(s.requests, 100.0);
        assert_eq!(s.errors, 10.0);
        assert_eq!(
            s.buckets,
            vec![(0.001, 50.0), (0.01, 99.0), (f64::INFINITY, 100.0)]
        );
    }

    #[test]
    fn a_point_is_the_difference_of_two_scrapes() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1000);
        let t1 = t0 + Duration::from_secs(10);
        let empty = Scrape::default();
        let p = point(&empty, t0, &parse(A), t1).unwrap();
        assert_eq!(p.rps, 10.0);
        assert!((p.error_rate - 0.1).abs() < 1e-9);
        assert_eq!(p.p99, Some(0.01));
        // A restart (counters back to less) gives no point.
        assert!(point(&parse(A), t0, &empty, t1).is_none());
    }
}
