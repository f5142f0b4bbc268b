//! `oxbus out list|get|put|delete|ping|stats`: outgoing REST, SQL and AMQP connections through
//! the admin API (docs/OUTGOING.md). A credential is read from a file or standard input,
//! never from the command line, and never printed (the API shows `has_secret` only).

use serde_json::Value;
use tokio::runtime::Runtime;

use super::CliError;
use super::args::{OutAction, OutType, Output, ServerArgs};
use super::client::{call, percent_encode};
use super::format::print;

fn one(kind: OutType, name: &str) -> String {
    format!("/v1/outgoing/{}/{}", kind.as_str(), percent_encode(name))
}

/// Runs one `out` subcommand.
pub fn command(rt: &Runtime, action: &OutAction) -> Result<(), CliError> {
    match action {
        OutAction::List { to, kind, output } => {
            // JSON: one document per type, a line each.
            for k in kinds(*kind) {
                let path = format!("/v1/outgoing/{}", k.as_str());
                print(call(rt, to, "GET", &path, Vec::new())?, *output, print_list);
            }
        }
        OutAction::Get {
            to,
            kind,
            name,
            output,
        } => {
            let answer = call(rt, to, "GET", &one(*kind, name), Vec::new())?;
            print(answer, *output, |d| {
                println!("{}", serde_json::to_string_pretty(d).expect("JSON prints"))
            });
        }
        OutAction::Put {
            to,
            kind,
            name,
            file,
            secret_file,
            secret_stdin,
            output,
        } => {
            let body = definition(*kind, name, file, secret_file.as_deref(), *secret_stdin)?;
            let answer = call(
                rt,
                to,
                "PUT",
                &one(*kind, name),
                body.to_string().into_bytes(),
            )?;
            print(answer, *output, |d| {
                println!(
                    "{} connection {name} {} (config version {})",
                    kind.as_str(),
                    if d["created"] == true {
                        "created"
                    } else {
                        "updated"
                    },
                    d["config_version"]
                )
            });
        }
        OutAction::Delete {
            to,
            kind,
            name,
            output,
        } => {
            let answer = call(rt, to, "DELETE", &one(*kind, name), Vec::new())?;
            print(answer, *output, |d| {
                println!(
                    "{} connection {name} deleted (config version {})",
                    kind.as_str(),
                    d["config_version"]
                )
            });
        }
        OutAction::Ping {
            to,
            kind,
            name,
            output,
        } => {
            let path = format!("{}/ping", one(*kind, name));
            let answer = call(rt, to, "POST", &path, Vec::new())?;
            let doc = answer.doc.clone().unwrap_or(Value::Null);
            print(answer, *output, |d| {
                println!(
                    "{} {name}: {} in {:.1} ms: {}",
                    kind.as_str(),
                    if d["ok"] == true { "ok" } else { "FAILED" },
                    d["took_ms"].as_f64().unwrap_or(0.0),
                    d["detail"].as_str().unwrap_or("")
                )
            });
            if doc["ok"] != true {
                return Err(CliError::PingFailed(
                    format!("{} connection {name}", kind.as_str()),
                    doc["detail"].as_str().unwrap_or("no detail").to_owned(),
                ));
            }
        }
        OutAction::Stats {
            to,
            kind,
            name,
            output,
        } => return stats(rt, to, *kind, name.as_deref(), *output),
    }
    Ok(())
}

fn kinds(kind: Option<OutType>) -> Vec<OutType> {
    match kind {
        Some(k) => vec![k],
        None => vec![
            OutType::Rest,
            OutType::Sql,
            OutType::Amqp,
            OutType::Redis,
            OutType::Mqtt,
        ],
    }
}

/// One line per connection of a list answer.
fn print_list(d: &Value) {
    for (key, label) in [
        ("rest", "rest"),
        ("sql", "sql"),
        ("amqp", "amqp"),
        ("redis", "redis"),
        ("mqtt", "mqtt"),
    ] {
        let Some(list) = d[key].as_array() else {
            continue;
        };
        for c in list {
            let target = match label {
                "rest" => format!(
                    "{}{}  auth {}",
                    c["address"].as_str().unwrap_or(""),
                    c["url_path"].as_str().unwrap_or(""),
                    c["auth"]["type"].as_str().unwrap_or("none")
                ),
                "amqp" => format!(
                    "{}  user {}  pool {}",
                    c["address"].as_str().unwrap_or(""),
                    c["username"].as_str().unwrap_or("(default)"),
                    c["pool_size"]
                ),
                "redis" => format!(
                    "{}{}  pool {}",
                    c["address"].as_str().unwrap_or(""),
                    c["username"]
                        .as_str()
                        .map(|u| format!("  user {u}"))
                        .unwrap_or_default(),
                    c["pool_size"]
                ),
                "mqtt" => format!(
                    "{}{}",
                    c["address"].as_str().unwrap_or(""),
                    c["username"]
                        .as_str()
                        .map(|u| format!("  user {u}"))
                        .unwrap_or_default()
                ),
                _ => format!(
                    "{} {}",
                    c["engine"].as_str().unwrap_or(""),
                    c["url"].as_str().unwrap_or("")
                ),
            };
            println!(
                "{:<5} {:<28} {}{}",
                label,
                c["name"].as_str().unwrap_or(""),
                target,
                if c["has_secret"] == true {
                    "  (credential set)"
                } else {
                    ""
                }
            );
        }
    }
}

/// The body of `out put`: FILE's JSON with the credential from `--secret-file` or
/// `--secret-stdin` put where its type takes it.
fn definition(
    kind: OutType,
    name: &str,
    file: &str,
    secret_file: Option<&std::path::Path>,
    secret_stdin: bool,
) -> Result<Value, CliError> {
    let (mut def, secret) =
        super::secret::definition_and_secret(name, file, secret_file, secret_stdin, "credential")?;
    let (Some(secret), Some(obj)) = (secret, def.as_object_mut()) else {
        return Ok(def);
    };
    match kind {
        OutType::Sql | OutType::Amqp | OutType::Redis | OutType::Mqtt => {
            obj.insert("password".into(), Value::String(secret));
        }
        OutType::Rest => {
            let field = match obj
                .get("auth")
                .and_then(|a| a.get("type"))
                .and_then(Value::as_str)
            {
                Some("basic") => "password",
                Some("apikey") => "key",
                Some("bearer") => "token",
                Some("oauth2") => "client_secret",
                _ => {
                    return Err(CliError::OutCredential(
                        "a credential was given but the definition's auth.type takes none \
                         (basic, apikey, bearer and oauth2 do)"
                            .into(),
                    ));
                }
            };
            obj["auth"][field] = Value::String(secret);
        }
    }
    Ok(def)
}

/// `out stats [TYPE [NAME]]`: one line per connection.
fn stats(
    rt: &Runtime,
    to: &ServerArgs,
    kind: Option<OutType>,
    name: Option<&str>,
    output: Output,
) -> Result<(), CliError> {
    let mut rows: Vec<Value> = Vec::new();
    match (kind, name) {
        (Some(k), Some(n)) => {
            let answer = call(rt, to, "GET", &format!("{}/stats", one(k, n)), Vec::new())?;
            rows.extend(answer.doc);
        }
        _ => {
            for k in kinds(kind) {
                let answer = call(
                    rt,
                    to,
                    "GET",
                    &format!("/v1/outgoing/{}", k.as_str()),
                    Vec::new(),
                )?;
                let doc = answer.doc.unwrap_or(Value::Null);
                for c in doc[k.as_str()].as_array().into_iter().flatten() {
                    let mut s = c["stats"].clone();
                    if s.is_null() {
                        // Stored but not (yet) applied on this server.
                        s = serde_json::json!({"name": c["name"], "type": k.as_str()});
                    }
                    rows.push(s);
                }
            }
        }
    }
    if matches!(output, Output::Json) {
        println!("{}", Value::Array(rows));
        return Ok(());
    }
    print!("{}", table(&rows));
    Ok(())
}

/// The text table of connections' figures.
pub fn table(rows: &[Value]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<5} {:<28} {:>9} {:>7} {:>9} {:>5} {:>7} {:>5} {:>8}",
        "TYPE", "CONN", "CALLS", "ERRORS", "MEAN_MS", "POOL", "IN_USE", "IDLE", "WAITING"
    );
    for r in rows {
        let n = |k: &str| r[k].as_u64().unwrap_or(0);
        let count = n("latency_count");
        let mean = if count == 0 {
            "-".to_owned()
        } else {
            format!(
                "{:.2}",
                r["latency_sum_s"].as_f64().unwrap_or(0.0) * 1000.0 / count as f64
            )
        };
        let _ = writeln!(
            out,
            "{:<5} {:<28} {:>9} {:>7} {:>9} {:>5} {:>7} {:>5} {:>8}",
            r["type"].as_str().unwrap_or(""),
            r["name"].as_str().unwrap_or(""),
            n("calls"),
            n("errors"),
            mean,
            n("pool_size"),
            n("in_use"),
            n("idle"),
            n("waiting")
        );
    }
    out
}
