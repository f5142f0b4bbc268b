//! `GET /metrics` as the tests read it: a scrape of a [`Server`]'s admin listener (with a
//! bearer token or without, in the Prometheus text format or in OpenMetrics), the page
//! parsed into samples to look values up in, a scrape repeated until a condition holds, and
//! Prometheus's own `promtool check metrics` on a page.
//!
//! ```text
//! let page = prom::scrape(&srv).await;
//! prom::check(&page.text);
//! assert_eq!(page.get("oxbus_cache_hits_total", &[("cache", "tiny")]), Some(1.0));
//! ```
//!
//! Test code only: it starts nothing (servers come from [`crate::Env`]).

use crate::{Client, Server, eventually};
use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

/// What `/metrics` answers a client that does not ask for OpenMetrics (curl, promtool).
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What `/metrics` answers a client that asks for OpenMetrics (a Prometheus server).
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The Accept header a Prometheus server sends when it scrapes.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// How long [`scrape_until`] waits for its condition.
const UNTIL: Duration = Duration::from_secs(30);

// -- promtool --------------------------------------------------------------------------------

/// promtool from Debian's `prometheus` package (.ci/run installs it); `OXBUS_PROMTOOL`
/// names another.
pub fn promtool() -> String {
    if let Ok(p) = std::env::var("OXBUS_PROMTOOL") {
        return p;
    }
    for p in ["/usr/bin/promtool", "/usr/local/bin/promtool"] {
        if std::path::Path::new(p).exists() {
            return p.to_owned();
        }
    }
    panic!(
        "promtool not found: install Debian's `prometheus` package (.ci/run does) or set OXBUS_PROMTOOL"
    );
}

/// Runs `promtool check metrics` on `text`; fails on any error or lint warning (promtool
/// says nothing about a page it finds clean).
pub fn check(text: &str) {
    let tool = promtool();
    let mut child = Command::new(&tool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics: {:?}\n{report}\n--- exposition ---\n{text}",
        out.status
    );
}

// -- the exposition --------------------------------------------------------------------------

/// One sample: its name, labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    /// The value of the label `key`, if the sample has it.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }

    /// Whether the sample has every label of `labels` with that value (and maybe others).
    pub fn has(&self, labels: &[(&str, &str)]) -> bool {
        labels.iter().all(|(k, v)| self.label(k) == Some(*v))
    }
}

/// The samples of a page in the Prometheus text format or OpenMetrics (comments, `# EOF`
/// and blank lines skipped; a timestamp after the value is ignored). Panics, naming the
/// line, on one it cannot read.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| parse_line(l).unwrap_or_else(|e| panic!("sample line {l:?}: {e}")))
        .collect()
}

fn parse_line(line: &str) -> Result<Sample, String> {
    let end = line
        .find(['{', ' ', '\t'])
        .ok_or("no value after the name")?;
    let name = &line[..end];
    if name.is_empty() {
        return Err("no metric name".into());
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[end..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices();
        let mut key = String::new();
        let close = loop {
            let (i, c) = chars.next().ok_or("no `}` closing the labels")?;
            match c {
                '}' if key.trim().is_empty() => break i,
                ',' if key.trim().is_empty() => {}
                '=' => {
                    if chars.next().map(|(_, c)| c) != Some('"') {
                        return Err(format!("label {key:?}: value not quoted"));
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next().ok_or("label value not closed")?.1 {
                            '"' => break,
                            '\\' => match chars.next().ok_or("escape at the end")?.1 {
                                'n' => value.push('\n'),
                                c => value.push(c),
                            },
                            c => value.push(c),
                        }
                    }
                    let key = std::mem::take(&mut key).trim().to_owned();
                    if labels.insert(key.clone(), value).is_some() {
                        return Err(format!("label {key:?} twice"));
                    }
                }
                c => key.push(c),
            }
        };
        rest = &body[close + 1..];
    }
    let value = rest
        .split_whitespace()
        .next()
        .ok_or("no value after the series")?;
    let value = value.parse().map_err(|e| format!("value {value:?}: {e}"))?;
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// A scrape of `/metrics`: the page as served and its samples.
#[derive(Debug, Clone)]
pub struct Page {
    pub text: String,
    pub samples: Vec<Sample>,
}

impl Page {
    /// `text` parsed ([`parse`]).
    pub fn new(text: String) -> Page {
        let samples = parse(&text);
        Page { text, samples }
    }

    /// The samples named `name` that have every label of `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples
            .iter()
            .filter(move |s| s.name == name && s.has(labels))
    }

    /// The value of the sample `name` whose labels include `labels`; `None` when there is
    /// none. More than one matching sample is a mistake in the test.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<&Sample> = self.matching(name, labels).collect();
        assert!(
            found.len() <= 1,
            "{name}{labels:?} matches {found:?}\n{}",
            self.text
        );
        found.first().map(|s| s.value)
    }

    /// [`Page::get`], 0 when the sample is absent (a labelled counter appears with its
    /// first increment).
    pub fn get_or_zero(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// The sum over the samples named `name` that have every label of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// The series of the page (name and labels, not values), in its order.
    pub fn series(&self) -> Vec<(&str, &BTreeMap<String, String>)> {
        self.samples
            .iter()
            .map(|s| (s.name.as_str(), &s.labels))
            .collect()
    }
}

// -- scraping --------------------------------------------------------------------------------

/// The two flavours `/metrics` serves, chosen by the Accept header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// No Accept header (curl, promtool): the Prometheus text format 0.0.4.
    Prometheus,
    /// A Prometheus server's Accept header: OpenMetrics 1.0, ending in `# EOF`.
    OpenMetrics,
}

/// `srv`'s `/metrics` now, without a token, in the Prometheus text format; it must answer
/// 200 with [`PROMETHEUS_TEXT`].
pub async fn scrape(srv: &Server) -> Page {
    scrape_as(srv, None, Flavour::Prometheus).await
}

/// `srv`'s `/metrics` now, with `Authorization: Bearer <token>` when `token` is given, in
/// `flavour`; it must answer 200 with that flavour's content type (and OpenMetrics must end
/// in `# EOF`).
pub async fn scrape_as(srv: &Server, token: Option<&str>, flavour: Flavour) -> Page {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if let Some(a) = &auth {
        headers.push(("authorization", a));
    }
    if flavour == Flavour::OpenMetrics {
        headers.push(("accept", PROMETHEUS_ACCEPT));
    }
    let r = async {
        let mut c = Client::connect(srv.admin_port()).await?;
        c.request("GET", "/metrics", &headers, bytes::Bytes::new())
            .await
    }
    .await
    .unwrap_or_else(|e| panic!("GET /metrics failed: {e}; log:\n{}", srv.log()));
    let text = String::from_utf8(r.body.to_vec()).expect("UTF-8 exposition");
    assert_eq!(r.status, 200, "{text}");
    let content_type = match flavour {
        Flavour::Prometheus => PROMETHEUS_TEXT,
        Flavour::OpenMetrics => OPENMETRICS,
    };
    assert_eq!(r.header("content-type").as_deref(), Some(content_type));
    if flavour == Flavour::OpenMetrics {
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
    Page::new(text)
}

/// Scrapes `srv` ([`scrape`]) until the page satisfies `condition`, and returns that page;
/// panics naming `what` when none has within 30 s.
pub async fn scrape_until(srv: &Server, what: &str, condition: impl Fn(&Page) -> bool) -> Page {
    eventually(UNTIL, what, || async {
        let page = scrape(srv).await;
        condition(&page).then_some(page)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_labels_values_and_skips_comments() {
        let page = Page::new(
            "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\",path=\"/i/{id}, \\\"q\\\"\\\\\"} 2\n\
             g 0.5 1700000000\nh_bucket{le=\"+Inf\"} 3\nn NaN\n# EOF\n"
                .to_owned(),
        );
        assert_eq!(page.samples.len(), 4);
        let a = &page.samples[0];
        assert_eq!(a.name, "a_total");
        assert_eq!(a.label("x"), Some("1"));
        assert_eq!(a.label("path"), Some("/i/{id}, \"q\"\\"));
        assert_eq!(page.get("a_total", &[("x", "1")]), Some(2.0));
        assert_eq!(page.get("g", &[]), Some(0.5));
        assert_eq!(page.get("h_bucket", &[("le", "+Inf")]), Some(3.0));
        assert!(page.get("n", &[]).unwrap().is_nan());
        assert_eq!(page.get("a_total", &[("x", "2")]), None);
        assert_eq!(page.get_or_zero("nope", &[]), 0.0);
        assert_eq!(page.sum("a_total", &[]), 2.0);
        assert_eq!(page.series()[1], ("g", &BTreeMap::new()));
    }

    #[test]
    #[should_panic(expected = "matches")]
    fn an_ambiguous_lookup_fails() {
        Page::new("s{a=\"1\"} 1\ns{a=\"2\"} 2\n".to_owned()).get("s", &[]);
    }
}
