//! `oxbus cache list|get|set|delete|keys|clear`: the named caches of the server addressed,
//! through the admin API (writes replicate like a service's). Sends and prints only.

use super::CliError;
use super::args::{CacheAction, Output};
use super::client::{percent_encode, target};
use tokio::runtime::Runtime;

/// `oxbus cache …`.
pub fn command(rt: &Runtime, action: &CacheAction) -> Result<(), CliError> {
    let to = match action {
        CacheAction::List { to, .. }
        | CacheAction::Get { to, .. }
        | CacheAction::Set { to, .. }
        | CacheAction::Delete { to, .. }
        | CacheAction::Keys { to, .. }
        | CacheAction::Clear { to, .. } => to,
    };
    let target = target(to)?;
    let call = |method: &str, path: String, body: Vec<u8>| {
        rt.block_on(target.call_json(method, &path, body))
    };
    let entry = |cache: &str, key: &str| {
        format!(
            "/v1/caches/{}/keys/{}",
            percent_encode(cache),
            percent_encode(key)
        )
    };
    match action {
        CacheAction::List { output, .. } => call("GET", "/v1/caches".into(), Vec::new()).map(|d| {
            if matches!(output, Output::Json) {
                println!("{d}");
                return;
            }
            println!(
                "{:<24} {:>9} {:>9} {:>10} {:>10} {:>9}  settings",
                "cache", "entries", "max", "hits", "misses", "evicted"
            );
            let list = d.get("caches").unwrap_or(&d);
            for c in list.as_array().into_iter().flatten() {
                println!(
                    "{:<24} {:>9} {:>9} {:>10} {:>10} {:>9}  expiry {}, item <= {} B{}{}",
                    c["name"].as_str().unwrap_or(""),
                    // As numbers: a JSON value's Display ignores the column widths.
                    c["entries"].as_u64().unwrap_or(0),
                    c["max_entries"].as_u64().unwrap_or(0),
                    c["hits"].as_u64().unwrap_or(0),
                    c["misses"].as_u64().unwrap_or(0),
                    c["evictions"].as_u64().unwrap_or(0),
                    super::format::expiry(&c["default_expiry_s"]),
                    c["max_item_size"],
                    if c["extend_expiry_on_get"] == true {
                        ", extend on get"
                    } else {
                        ""
                    },
                    if c["replicate"] == true {
                        ", replicated"
                    } else {
                        ", this server only"
                    },
                );
            }
        }),
        CacheAction::Get {
            key, cache, output, ..
        } => call("GET", entry(cache, key), Vec::new()).map(|d| match output {
            Output::Json => println!("{d}"),
            Output::Text if d["type"] == "bytes" => {
                println!("(bytes, base64) {}", d["value"].as_str().unwrap_or(""))
            }
            Output::Text => println!("{}", d["value"]),
        }),
        CacheAction::Set {
            key,
            value,
            cache,
            string,
            expiry,
            ..
        } => {
            let value: Result<serde_json::Value, CliError> = if *string {
                Ok(serde_json::Value::String(value.clone()))
            } else {
                serde_json::from_str(value).map_err(CliError::CacheValue)
            };
            value.and_then(|v| {
                let mut body = serde_json::json!({ "value": v });
                if expiry.is_some_and(|s| !s.is_finite() || s < 0.0) {
                    return Err(CliError::Expiry);
                }
                if let Some(s) = expiry {
                    body["expiry"] = serde_json::json!(s);
                }
                call("PUT", entry(cache, key), body.to_string().into_bytes())
                    .map(|_| println!("stored {key} in cache {cache}"))
            })
        }
        CacheAction::Delete { key, cache, .. } => call("DELETE", entry(cache, key), Vec::new())
            .map(|d| {
                if d["deleted"] == true {
                    println!("deleted {key} from cache {cache}");
                } else {
                    println!("{key} was not in cache {cache}");
                }
            }),
        CacheAction::Keys {
            cache,
            prefix,
            after,
            limit,
            all,
            output,
            ..
        } => {
            let mut after = after.clone();
            loop {
                let mut path = format!(
                    "/v1/caches/{}/keys?prefix={}",
                    percent_encode(cache),
                    percent_encode(prefix)
                );
                if let Some(a) = &after {
                    path.push_str(&format!("&after={}", percent_encode(a)));
                }
                if let Some(n) = limit {
                    path.push_str(&format!("&limit={n}"));
                }
                let page = match call("GET", path, Vec::new()) {
                    Ok(p) => p,
                    Err(e) => break Err(e),
                };
                if matches!(output, Output::Json) {
                    println!("{page}");
                } else {
                    for k in page["keys"].as_array().into_iter().flatten() {
                        println!("{}", k.as_str().unwrap_or(""));
                    }
                }
                match page["next"].as_str() {
                    Some(next) if *all => after = Some(next.to_owned()),
                    Some(next) => {
                        if matches!(output, Output::Text) {
                            eprintln!("(more: --after {next:?}, or --all)");
                        }
                        break Ok(());
                    }
                    None => break Ok(()),
                }
            }
        }
        CacheAction::Clear { cache, .. } => call(
            "POST",
            format!("/v1/caches/{}/clear", percent_encode(cache)),
            Vec::new(),
        )
        .map(|d| {
            println!(
                "cleared {} from cache {cache}",
                super::format::count_of(&d["cleared"], "entry", "entries")
            )
        }),
    }
}
