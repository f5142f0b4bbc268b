//! `oxbus audit`: the audit log of admin changes, newest first (`GET /v1/audit`). Reads only.

use super::CliError;
use super::args::{Output, ServerArgs};
use super::client::{call, percent_encode};
use super::format::{print, utc};
use tokio::runtime::Runtime;

/// What `oxbus audit` selects.
pub struct Filter<'a> {
    pub object: Option<&'a str>,
    pub who: Option<&'a str>,
    pub since: Option<&'a str>,
    pub limit: Option<u32>,
    pub before: Option<i64>,
}

/// The request path of `filter`.
fn path(filter: &Filter<'_>) -> String {
    let mut q = Vec::new();
    for (k, v) in [
        ("object", filter.object),
        ("who", filter.who),
        ("since", filter.since),
    ] {
        if let Some(v) = v {
            q.push(format!("{k}={}", percent_encode(v)));
        }
    }
    if let Some(n) = filter.limit {
        q.push(format!("limit={n}"));
    }
    if let Some(id) = filter.before {
        q.push(format!("before={id}"));
    }
    if q.is_empty() {
        "/v1/audit".to_owned()
    } else {
        format!("/v1/audit?{}", q.join("&"))
    }
}

/// `oxbus audit [--object KIND[/NAME]] [--who NAME] [--since T] [--limit N] [--before ID]
/// [--json]`.
pub fn command(
    rt: &Runtime,
    to: &ServerArgs,
    filter: &Filter<'_>,
    json: bool,
) -> Result<(), CliError> {
    let answer = call(rt, to, "GET", &path(filter), Vec::new())?;
    let output = if json { Output::Json } else { Output::Text };
    print(answer, output, print_audit);
    Ok(())
}

/// The first 12 hex digits of a digest, `-` for none.
fn short(d: &serde_json::Value) -> String {
    d.as_str()
        .map_or_else(|| "-".to_owned(), |s| s.chars().take(12).collect())
}

/// One line per entry, then how to get the next page.
fn print_audit(d: &serde_json::Value) {
    let entries = d["entries"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if entries.is_empty() {
        println!("no audit entries");
        return;
    }
    println!(
        "{:>6}  {:<23}  {:<16} {:<12} {:<10} {:<32} {:<12} {:<12} DETAIL",
        "ID", "TIME", "SERVER", "WHO", "ACTION", "OBJECT", "BEFORE", "AFTER"
    );
    for e in entries {
        let detail = match &e["detail"] {
            serde_json::Value::Object(m) if m.is_empty() => String::new(),
            serde_json::Value::Null => String::new(),
            v => v.to_string(),
        };
        println!(
            "{:>6}  {:<23}  {:<16} {:<12} {:<10} {:<32} {:<12} {:<12} {}{}",
            e["id"].as_i64().unwrap_or(0),
            utc(e["at_ms"].as_i64().unwrap_or(0)),
            e["server"].as_str().unwrap_or(""),
            e["who"].as_str().unwrap_or(""),
            e["action"].as_str().unwrap_or(""),
            e["object"].as_str().unwrap_or(""),
            short(&e["before"]),
            short(&e["after"]),
            detail,
            e["cid"]
                .as_str()
                .map(|c| format!(" cid={c}"))
                .unwrap_or_default(),
        );
    }
    if let Some(id) = d["next_before"].as_i64() {
        println!("more: the same command with --before {id}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_becomes_the_query() {
        let none = Filter {
            object: None,
            who: None,
            since: None,
            limit: None,
            before: None,
        };
        assert_eq!(path(&none), "/v1/audit");
        let all = Filter {
            object: Some("channel//echo"),
            who: Some("ci bot"),
            since: Some("1h"),
            limit: Some(5),
            before: Some(42),
        };
        assert_eq!(
            path(&all),
            "/v1/audit?object=channel%2F%2Fecho&who=ci%20bot&since=1h&limit=5&before=42"
        );
    }
}
