//! `oxbus services --stats [NAME]`: the per-service statistics of every server of the
//! cluster (`GET /v1/services/stats`, `GET /v1/services/{name}/stats`), as a table — per
//! service and server, calls, errors, mean, p50 and p99 over the last 1, 5 and 15 minutes,
//! and the last error — or as the server sent it (`--json`).

use serde_json::Value;

use super::CliError;
use super::args::{Output, ServerArgs};
use super::client::{call, percent_encode};
use super::format::{print, utc};
use tokio::runtime::Runtime;

/// `oxbus services --stats [NAME]`.
pub fn services(
    rt: &Runtime,
    to: &ServerArgs,
    name: Option<&str>,
    output: Output,
) -> Result<(), CliError> {
    let path = match name {
        Some(n) => format!("/v1/services/{}/stats", percent_encode(n)),
        None => "/v1/services/stats".to_owned(),
    };
    let answer = call(rt, to, "GET", &path, Vec::new())?;
    print(answer, output, |d| print!("{}", table(d)));
    Ok(())
}

fn ms(v: &Value) -> String {
    v.as_f64()
        .map_or_else(|| "-".to_owned(), |x| format!("{x:.2}"))
}

/// The text table of a stats document: three lines (1m, 5m, 15m) per service and server,
/// the service, server and last error on the first; then one line per server that records
/// nothing (`"recording": false`: its figures would all be 0) and per server that did not
/// answer.
pub fn table(d: &Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<32} {:<16} {:<6} {:>8} {:>7} {:>9} {:>9} {:>9}  LAST ERROR",
        "SERVICE", "SERVER", "WINDOW", "CALLS", "ERRORS", "MEAN_MS", "P50_MS", "P99_MS"
    );
    let windows: Vec<&str> = d["windows"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    // Rows by service, then server.
    let mut rows: Vec<(String, String, Option<&Value>)> = Vec::new();
    let mut silent: Vec<(String, String)> = Vec::new();
    for (server, s) in d["servers"].as_object().into_iter().flatten() {
        if s["answered"] != true {
            silent.push((
                server.clone(),
                format!("no answer: {}", s["error"].as_str().unwrap_or("no answer")),
            ));
            continue;
        }
        if s["recording"] == false {
            silent.push((
                server.clone(),
                "not recording (metrics.enabled = false on this server)".to_owned(),
            ));
            continue;
        }
        for (service, st) in s["services"].as_object().into_iter().flatten() {
            rows.push((service.clone(), server.clone(), Some(st)));
        }
    }
    rows.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    for (service, server, st) in rows {
        let Some(st) = st else { continue };
        for (i, w) in windows.iter().enumerate() {
            let f = &st["windows"][*w];
            let last = if i == 0 {
                match st.get("last_error").filter(|e| !e.is_null()) {
                    Some(e) => format!(
                        "{} {} {} cid {}",
                        e["at_ms"].as_i64().map(utc).unwrap_or_default(),
                        e["family"].as_str().unwrap_or(""),
                        e["status"],
                        e["cid"].as_str().unwrap_or("")
                    ),
                    None => "-".to_owned(),
                }
            } else {
                String::new()
            };
            let (svc, srv) = if i == 0 {
                (service.as_str(), server.as_str())
            } else {
                ("", "")
            };
            let _ = writeln!(
                out,
                "{:<32} {:<16} {:<6} {:>8} {:>7} {:>9} {:>9} {:>9}  {}",
                svc,
                srv,
                w,
                f["calls"].as_u64().unwrap_or(0),
                f["errors"].as_u64().unwrap_or(0),
                ms(&f["mean_ms"]),
                ms(&f["p50_ms"]),
                ms(&f["p99_ms"]),
                last
            );
        }
    }
    for (server, why) in silent {
        let _ = writeln!(out, "{:<32} {:<16} {why}", "-", server);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_table_has_three_windows_per_service_and_server_and_lists_silent_servers() {
        let d = serde_json::json!({
            "server": "a",
            "windows": ["1m", "5m", "15m"],
            "servers": {
                "a": {"answered": true, "recording": true, "services": {
                    "crm.get": {"windows": {
                        "1m": {"calls": 3, "errors": 1, "mean_ms": 2.5, "p50_ms": 2.0, "p99_ms": 9.0},
                        "5m": {"calls": 4, "errors": 1, "mean_ms": 2.5, "p50_ms": 2.0, "p99_ms": 9.0},
                        "15m": {"calls": 5, "errors": 2, "mean_ms": 2.5, "p50_ms": 2.0, "p99_ms": 9.0}},
                        "last_error": {"at_ms": 0, "cid": "c9", "family": "ValueError", "status": 500}}}},
                "b": {"answered": true, "recording": true, "services": {
                    "crm.get": {"windows": {
                        "1m": {"calls": 0, "errors": 0, "mean_ms": null, "p50_ms": null, "p99_ms": null},
                        "5m": {"calls": 0, "errors": 0, "mean_ms": null, "p50_ms": null, "p99_ms": null},
                        "15m": {"calls": 0, "errors": 0, "mean_ms": null, "p50_ms": null, "p99_ms": null}},
                        "last_error": null}}},
                "c": {"answered": false, "error": "no bus link to this server right now"},
                "d": {"answered": true, "recording": false, "services": {
                    "crm.get": {"windows": {
                        "1m": {"calls": 0, "errors": 0, "mean_ms": null, "p50_ms": null, "p99_ms": null},
                        "5m": {"calls": 0, "errors": 0, "mean_ms": null, "p50_ms": null, "p99_ms": null},
                        "15m": {"calls": 0, "errors": 0, "mean_ms": null, "p50_ms": null, "p99_ms": null}},
                        "last_error": null}}}
            }
        });
        let t = super::table(&d);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 1 + 3 + 3 + 1 + 1, "{t}");
        // A server that records nothing: one line saying so, not rows of zeros.
        assert!(
            lines[8].contains(" d ") && lines[8].contains("not recording"),
            "{t}"
        );
        assert!(
            !t.lines()
                .any(|l| l.starts_with("crm.get") && l.contains(" d "))
        );
        assert!(lines[1].starts_with("crm.get") && lines[1].contains(" a "));
        assert!(
            lines[1].contains("1970-01-01 00:00:00 UTC ValueError 500 cid c9"),
            "{t}"
        );
        assert!(
            lines[3].contains("15m") && lines[3].contains("       5       2"),
            "{t}"
        );
        assert!(
            lines[4].contains(" b ") && lines[4].trim_end().ends_with('-'),
            "{t}"
        );
        assert!(
            lines[7].contains("c") && lines[7].contains("no answer: no bus link"),
            "{t}"
        );
    }
}
