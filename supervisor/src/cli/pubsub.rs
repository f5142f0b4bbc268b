//! `oxbus pubsub …`: topics, subscriptions and endpoints, a subscription's queue and dead
//! letters, and a test publish, through the admin API's `/v1/pubsub` (docs/PUBSUB.md).

use serde_json::{Value, json};
use tokio::runtime::Runtime;

use super::CliError;
use super::args::{PubsubAction, PubsubDefAction};
use super::client::{call, percent_encode};
use super::format::{print, utc};

/// The three kinds of definition, as the admin API names them.
#[derive(Clone, Copy)]
enum Kind {
    Topic,
    Sub,
    Endpoint,
}

impl Kind {
    fn what(self) -> &'static str {
        match self {
            Kind::Topic => "topic",
            Kind::Sub => "subscription",
            Kind::Endpoint => "endpoint",
        }
    }

    /// The answer's key of a put (`{"topic": …}`).
    fn key(self) -> &'static str {
        match self {
            Kind::Topic => "topic",
            Kind::Sub => "subscription",
            Kind::Endpoint => "endpoint",
        }
    }

    fn path(self, name: &str) -> String {
        match self {
            Kind::Topic => topic_path("/v1/pubsub/topics", name),
            Kind::Sub => format!("/v1/pubsub/subs/{}", percent_encode(name)),
            Kind::Endpoint => format!("/v1/pubsub/endpoints/{}", percent_encode(name)),
        }
    }
}

/// `base` and a topic's name as path segments (`/orders/new` or `orders/new`: each
/// segment encoded).
fn topic_path(base: &str, topic: &str) -> String {
    let mut path = base.to_owned();
    for seg in topic.trim_start_matches('/').split('/') {
        path.push('/');
        path.push_str(&percent_encode(seg));
    }
    path
}

/// Runs one `pubsub` subcommand.
pub fn command(rt: &Runtime, action: &PubsubAction) -> Result<(), CliError> {
    match action {
        PubsubAction::Topics { to, output } => {
            let answer = call(rt, to, "GET", "/v1/pubsub/topics", Vec::new())?;
            print(answer, *output, |d| print!("{}", topics_table(d)));
        }
        PubsubAction::Subs { to, output } => {
            let answer = call(rt, to, "GET", "/v1/pubsub/subs", Vec::new())?;
            print(answer, *output, |d| print!("{}", subs_table(d)));
        }
        PubsubAction::Endpoints { to, output } => {
            let answer = call(rt, to, "GET", "/v1/pubsub/endpoints", Vec::new())?;
            print(answer, *output, |d| {
                println!("{:<28} {:<28} PATTERNS", "ENDPOINT", "SECURITY");
                for e in d["endpoints"].as_array().into_iter().flatten() {
                    let patterns: Vec<&str> = e["topic_patterns"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    println!(
                        "{:<28} {:<28} {}",
                        e["name"].as_str().unwrap_or(""),
                        e["security"].as_str().unwrap_or(""),
                        patterns.join(" ")
                    );
                }
            });
        }
        PubsubAction::Topic { action } => return definition(rt, Kind::Topic, action),
        PubsubAction::Sub { action } => return definition(rt, Kind::Sub, action),
        PubsubAction::Endpoint { action } => return definition(rt, Kind::Endpoint, action),
        PubsubAction::Queue {
            to,
            sub_key,
            limit,
            output,
        }
        | PubsubAction::Dead {
            to,
            sub_key,
            limit,
            output,
        } => {
            let which = if matches!(action, PubsubAction::Queue { .. }) {
                "queue"
            } else {
                "dead"
            };
            let path = format!(
                "{}/{which}?limit={}",
                Kind::Sub.path(sub_key),
                limit.unwrap_or(100)
            );
            let answer = call(rt, to, "GET", &path, Vec::new())?;
            print(answer, *output, |d| print!("{}", messages_table(d)));
        }
        PubsubAction::Requeue {
            to,
            sub_key,
            msg_ids,
            output,
        } => {
            let body = if msg_ids.is_empty() {
                json!({})
            } else {
                json!({ "msg_ids": msg_ids })
            };
            let path = format!("{}/requeue", Kind::Sub.path(sub_key));
            let answer = call(rt, to, "POST", &path, body.to_string().into_bytes())?;
            print(answer, *output, |d| {
                println!("requeued {} dead letter(s) of {sub_key}", d["requeued"])
            });
        }
        PubsubAction::Purge {
            to,
            sub_key,
            output,
        } => {
            let path = format!("{}/purge", Kind::Sub.path(sub_key));
            let answer = call(rt, to, "POST", &path, Vec::new())?;
            print(answer, *output, |d| {
                println!("purged {} message(s) from {sub_key}", d["purged"])
            });
        }
        PubsubAction::Publish {
            to,
            topic,
            data,
            json,
            file,
            priority,
            expiration,
            no_gd,
            output,
        } => {
            let data = match (data, json, file) {
                (Some(text), _, _) => Value::String(text.clone()),
                (None, Some(j), _) => {
                    serde_json::from_str(j).map_err(|source| CliError::JobJson {
                        from: "--json".into(),
                        source,
                    })?
                }
                (None, None, Some(f)) => Value::String(read_text(f)?),
                (None, None, None) => return Err(CliError::NoDefinition),
            };
            let mut msg = json!({ "data": data });
            if let Some(p) = priority {
                msg["priority"] = json!(p);
            }
            if let Some(e) = expiration {
                msg["expiration"] = json!(e);
            }
            if *no_gd {
                msg["has_gd"] = json!(false);
            }
            let path = topic_path("/v1/pubsub/publish", topic);
            let answer = call(rt, to, "POST", &path, msg.to_string().into_bytes())?;
            print(answer, *output, |d| {
                for id in d["msg_ids"].as_array().into_iter().flatten() {
                    println!("{}", id.as_str().unwrap_or(""));
                }
            });
        }
    }
    Ok(())
}

/// A UTF-8 text file's contents (`-`: standard input).
fn read_text(f: &std::path::Path) -> Result<String, CliError> {
    if f.as_os_str() == "-" {
        return std::io::read_to_string(std::io::stdin()).map_err(CliError::Stdin);
    }
    std::fs::read_to_string(f).map_err(|source| CliError::Read {
        path: f.to_owned(),
        source,
    })
}

/// `get|put|delete` of one definition of `kind`.
fn definition(rt: &Runtime, kind: Kind, action: &PubsubDefAction) -> Result<(), CliError> {
    match action {
        PubsubDefAction::Get { to, name, output } => {
            let answer = call(rt, to, "GET", &kind.path(name), Vec::new())?;
            print(answer, *output, |d| {
                println!("{}", serde_json::to_string_pretty(d).expect("JSON prints"))
            });
        }
        PubsubDefAction::Put {
            to,
            name,
            file,
            json,
            output,
        } => {
            let (text, from) = match (file, json) {
                (Some(f), _) => (read_text(f)?, f.display().to_string()),
                (None, Some(j)) => (j.clone(), "--json".into()),
                (None, None) => return Err(CliError::NoDefinition),
            };
            let def: Value =
                serde_json::from_str(&text).map_err(|source| CliError::JobJson { from, source })?;
            let answer = call(
                rt,
                to,
                "PUT",
                &kind.path(name),
                def.to_string().into_bytes(),
            )?;
            print(answer, *output, |d| {
                let stored = &d[kind.key()];
                let shown = stored["name"]
                    .as_str()
                    .or(stored["sub_key"].as_str())
                    .unwrap_or(name);
                println!(
                    "{} {shown} {} (config version {})",
                    kind.what(),
                    if d["created"] == true {
                        "created"
                    } else {
                        "updated"
                    },
                    d["config_version"]
                )
            });
        }
        PubsubDefAction::Delete { to, name, output } => {
            let answer = call(rt, to, "DELETE", &kind.path(name), Vec::new())?;
            print(answer, *output, |d| {
                println!(
                    "{} {name} deleted (config version {})",
                    kind.what(),
                    d["config_version"]
                )
            });
        }
    }
    Ok(())
}

/// A figure of a definition's `stats`, `-` when the broker gave none.
fn stat(d: &Value, key: &str) -> String {
    match &d["stats"][key] {
        Value::Null => "-".into(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.1}"),
            _ => n.to_string(),
        },
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

/// The text table of `GET /v1/pubsub/topics`.
pub fn topics_table(d: &Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<32} {:<3} {:>9} {:>9} {:>10} {:>8}  SUBSCRIPTIONS",
        "TOPIC", "GD", "DEPTH_GD", "LAST_SEQ", "PUBLISHED", "RATE_1M"
    );
    for t in d["topics"].as_array().into_iter().flatten() {
        let subs: Vec<&str> = t["stats"]["subscriptions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let _ = writeln!(
            out,
            "{:<32} {:<3} {:>9} {:>9} {:>10} {:>8}  {}",
            t["name"].as_str().unwrap_or(""),
            if t["has_gd"] == false { "no" } else { "yes" },
            stat(t, "depth_gd"),
            stat(t, "last_seq"),
            stat(t, "published"),
            stat(t, "rate_1m"),
            if t["stats"].is_null() {
                t["stats_error"].as_str().unwrap_or("").to_owned()
            } else {
                subs.join(" ")
            }
        );
    }
    out
}

/// The text table of `GET /v1/pubsub/subs`.
pub fn subs_table(d: &Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<28} {:<24} {:<8} {:<12} {:>8} {:>9} {:>10} {:>6}",
        "SUB_KEY", "TOPIC", "DELIVERY", "SERVER", "DEPTH", "IN_FLIGHT", "DELIVERED", "DEAD"
    );
    for s in d["subscriptions"].as_array().into_iter().flatten() {
        let delivery = match s["delivery"]["type"].as_str() {
            Some("service") => format!(
                "service {}",
                s["delivery"]["service"].as_str().unwrap_or("")
            ),
            Some(t) => t.to_owned(),
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "{:<28} {:<24} {:<8} {:<12} {:>8} {:>9} {:>10} {:>6}",
            s["sub_key"].as_str().unwrap_or(""),
            s["topic"].as_str().unwrap_or(""),
            delivery,
            stat(s, "owner"),
            stat(s, "depth"),
            stat(s, "in_flight"),
            stat(s, "delivered"),
            stat(s, "dead_letters"),
        );
    }
    out
}

/// The text table of a queue's or the dead letters' messages.
pub fn messages_table(d: &Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<29} {:>4} {:>8} {:<23} {:>7} {:>5}  DATA",
        "MSG_ID", "PRIO", "SEQ", "PUBLISHED", "SIZE", "TRIES"
    );
    for m in d["messages"].as_array().into_iter().flatten() {
        let mut data: String = m["data"].as_str().unwrap_or("").chars().take(40).collect();
        data = data.replace(['\n', '\r', '\t'], " ");
        if let Some(r) = m["reason"].as_str() {
            data = format!("{data}  ({r})");
        }
        let _ = writeln!(
            out,
            "{:<29} {:>4} {:>8} {:<23} {:>7} {:>5}  {data}",
            m["msg_id"].as_str().unwrap_or(""),
            m["priority"],
            m["seq"],
            m["pub_time_ms"].as_i64().map(utc).unwrap_or_default(),
            m["size"],
            m["delivery_count"],
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_paths_take_the_name_s_segments() {
        assert_eq!(
            topic_path("/v1/pubsub/topics", "/orders/new"),
            "/v1/pubsub/topics/orders/new"
        );
        assert_eq!(
            topic_path("/v1/pubsub/publish", "orders/new"),
            "/v1/pubsub/publish/orders/new"
        );
        assert_eq!(Kind::Sub.path("sk.a b"), "/v1/pubsub/subs/sk.a%20b");
    }

    #[test]
    fn tables_show_figures_or_why_not() {
        let d = json!({"topics": [
            {"name": "/a", "has_gd": true, "stats": {"depth_gd": 3, "last_seq": 10,
             "published": 10, "rate_1m": 0.5, "subscriptions": ["sk.1", "sk.2"]}},
            {"name": "/b", "has_gd": false, "stats": null, "stats_error": "not built"},
        ]});
        let t = topics_table(&d);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[1].starts_with("/a") && lines[1].contains("sk.1 sk.2"),
            "{t}"
        );
        assert!(lines[1].contains(" 0.5 "), "{t}");
        assert!(
            lines[2].contains(" no ") && lines[2].contains("not built"),
            "{t}"
        );
        let d = json!({"subscriptions": [{"sub_key": "sk.1", "topic": "/a",
            "delivery": {"type": "pull"}, "stats": {"owner": "s1", "depth": 4,
            "in_flight": 1, "delivered": 9, "dead_letters": 0}}]});
        let t = subs_table(&d);
        assert!(t.lines().nth(1).unwrap().contains("s1"), "{t}");
        let d = json!({"messages": [{"msg_id": "zpsm1", "priority": 5, "seq": 7,
            "pub_time_ms": 0, "size": 2, "delivery_count": 3, "data": "hi\nthere",
            "reason": "500 from the service"}]});
        let t = messages_table(&d);
        assert!(t.contains("hi there  (500 from the service)"), "{t}");
        assert!(t.contains("1970-01-01 00:00:00 UTC"), "{t}");
    }
}
