//! `oxbus cluster status`: the cluster as one server's admin API sees it — the store, each
//! server and its config version, the bus. Reads only.

use super::CliError;
use super::args::{Output, ServerArgs};
use super::client::call;
use super::format::print;
use tokio::runtime::Runtime;

/// `oxbus cluster status`.
pub fn status(rt: &Runtime, to: &ServerArgs, output: Output) -> Result<(), CliError> {
    let answer = call(rt, to, "GET", "/v1/cluster", Vec::new())?;
    print(answer, output, print_cluster);
    Ok(())
}

/// `cluster status`: the store, then one line per server.
fn print_cluster(d: &serde_json::Value) {
    let store = &d["store"];
    let current = store["config_version"].as_i64();
    match current {
        Some(v) => println!(
            "store: {} reachable, config version {v}",
            store["kind"].as_str().unwrap_or("")
        ),
        None => println!(
            "store: {} UNREACHABLE ({})",
            store["kind"].as_str().unwrap_or(""),
            store["error"].as_str().unwrap_or("")
        ),
    }
    println!(
        "{:<32} {:<22} {:>8}  {:<9} SEEN",
        "SERVER", "HTTP", "VERSION", "STATE"
    );
    for s in d["servers"].as_array().into_iter().flatten() {
        let version = s["config_version"].as_i64().unwrap_or(0);
        let state = match current {
            Some(v) if v == version => "in sync",
            Some(_) => "behind",
            None => "unknown",
        };
        println!(
            "{:<32} {:<22} {:>8}  {:<9} {}{}",
            format!(
                "{}{}",
                s["name"].as_str().unwrap_or(""),
                if s["this_server"] == true { " *" } else { "" }
            ),
            s["http_address"].as_str().unwrap_or("-"),
            version,
            state,
            s["seen_ms_ago"].as_i64().map_or_else(
                || "-".to_owned(),
                |ms| format!("{:.1} s ago", ms as f64 / 1000.0)
            ),
            if s["registered"] == false {
                " (not registered: store down)"
            } else {
                ""
            }
        );
    }
    let bus = &d["bus"];
    if bus["running"] == true {
        let links: Vec<String> = bus["links"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| {
                format!(
                    "{} ({}, up {:.1} s)",
                    l["peer"].as_str().unwrap_or(""),
                    l["role"].as_str().unwrap_or(""),
                    l["up_ms"].as_f64().unwrap_or(0.0) / 1000.0
                )
            })
            .collect();
        println!(
            "bus: {}",
            if links.is_empty() {
                "no links".to_owned()
            } else {
                format!("linked to {}", links.join(", "))
            }
        );
    } else {
        println!("bus: off ({})", bus["why"].as_str().unwrap_or(""));
    }
}
