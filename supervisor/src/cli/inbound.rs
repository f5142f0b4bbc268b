//! `oxbus inbound list|get|put|delete|stats <amqp|mqtt|file> …`: the inbound channels through the
//! admin API (`/v1/inbound/{type}`, docs/CONNECTORS.md), one code path for every type. A
//! password is read from a file or standard input, never from the command line, and never
//! printed (the API shows `has_secret` only).

use serde_json::Value;
use tokio::runtime::Runtime;

use super::CliError;
use super::args::{InboundAction, InboundType};
use super::client::{call, percent_encode};
use super::format::print;

fn one(kind: InboundType, name: &str) -> String {
    format!("/v1/inbound/{}/{}", kind.as_str(), percent_encode(name))
}

/// Runs one `inbound` subcommand.
pub fn command(rt: &Runtime, action: &InboundAction) -> Result<(), CliError> {
    match action {
        InboundAction::List { to, kind, output } => {
            let path = format!("/v1/inbound/{}", kind.as_str());
            let kind = *kind;
            print(call(rt, to, "GET", &path, Vec::new())?, *output, |d| {
                print_list(kind, d)
            });
        }
        InboundAction::Get {
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
        InboundAction::Put {
            to,
            kind,
            name,
            file,
            secret_file,
            secret_stdin,
            output,
        } => {
            let body = definition(name, file, secret_file.as_deref(), *secret_stdin)?;
            let answer = call(
                rt,
                to,
                "PUT",
                &one(*kind, name),
                body.to_string().into_bytes(),
            )?;
            print(answer, *output, |d| {
                println!(
                    "{} channel {name} {} (config version {})",
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
        InboundAction::Delete {
            to,
            kind,
            name,
            output,
        } => {
            let answer = call(rt, to, "DELETE", &one(*kind, name), Vec::new())?;
            print(answer, *output, |d| {
                println!(
                    "{} channel {name} deleted (config version {})",
                    kind.as_str(),
                    d["config_version"]
                )
            });
        }
        InboundAction::Stats {
            to,
            kind,
            name,
            output,
        } => {
            let path = format!("{}/stats", one(*kind, name));
            let answer = call(rt, to, "GET", &path, Vec::new())?;
            print(answer, *output, |d| {
                print!("{}", table(*kind, std::slice::from_ref(d)))
            });
        }
    }
    Ok(())
}

/// One line per channel of a list answer, with its status on the server addressed.
fn print_list(kind: InboundType, d: &Value) {
    let Some(list) = d[kind.as_str()].as_array() else {
        return;
    };
    for c in list {
        let s = &c["status"];
        if kind == InboundType::File {
            let dirs: Vec<&str> = c["directories"]
                .as_array()
                .map(|l| l.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            println!(
                "file  {:<28} {} -> {}  [{}]",
                c["name"].as_str().unwrap_or(""),
                dirs.join(", "),
                c["service"].as_str().unwrap_or(""),
                if s.is_null() {
                    "not applied".to_owned()
                } else {
                    format!(
                        "{}, {} done, {} failed{}",
                        s["state"].as_str().unwrap_or("?"),
                        s["done"],
                        s["failed"],
                        s["last_error"]
                            .as_str()
                            .map(|e| format!(": {e}"))
                            .unwrap_or_default()
                    )
                }
            );
            continue;
        }
        let state = if s.is_null() {
            "not applied".to_owned()
        } else if s["connected"] == true {
            format!("connected, {} acked", s["acked"])
        } else {
            format!(
                "not connected{}",
                s["last_error"]
                    .as_str()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            )
        };
        println!(
            "{:<5} {:<28} {} -> {}  [{}]{}",
            kind.as_str(),
            c["name"].as_str().unwrap_or(""),
            c["address"].as_str().unwrap_or(""),
            c["service"].as_str().unwrap_or(""),
            state,
            if c["is_active"] == false {
                "  (inactive)"
            } else {
                ""
            }
        );
    }
}

/// The text table of channels' status (each type has its own figures).
pub fn table(kind: InboundType, rows: &[Value]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if kind == InboundType::File {
        let _ = writeln!(
            out,
            "{:<28} {:>8} {:>10} {:>8} {:>9} {:>8} {:>11}  LAST_ERROR",
            "CHANNEL", "STATE", "HOLDER", "PENDING", "DONE", "FAILED", "REDELIVERED"
        );
        for r in rows {
            let n = |k: &str| r[k].as_u64().unwrap_or(0);
            let _ = writeln!(
                out,
                "{:<28} {:>8} {:>10} {:>8} {:>9} {:>8} {:>11}  {}",
                r["name"].as_str().unwrap_or(""),
                r["state"].as_str().unwrap_or("?"),
                r["holder"].as_str().unwrap_or("-"),
                n("pending"),
                n("done"),
                n("failed"),
                n("redelivered"),
                r["last_error"].as_str().unwrap_or("-")
            );
        }
        return out;
    }
    if kind == InboundType::Mqtt {
        let _ = writeln!(
            out,
            "{:<28} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}  LAST_ERROR",
            "CHANNEL",
            "CONNECTED",
            "SUBSCRIBED",
            "ACKED",
            "FAILED",
            "REFUSED",
            "DEFERRED",
            "DROPPED",
            "IN_FLIGHT"
        );
        for r in rows {
            let n = |k: &str| r[k].as_u64().unwrap_or(0);
            let yes = |k: &str| if r[k] == true { "yes" } else { "no" };
            let _ = writeln!(
                out,
                "{:<28} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}  {}",
                r["name"].as_str().unwrap_or(""),
                yes("connected"),
                yes("subscribed"),
                n("acked"),
                n("failed"),
                n("refused"),
                n("deferred"),
                n("dropped"),
                n("in_flight"),
                r["last_error"].as_str().unwrap_or("-")
            );
        }
        return out;
    }
    let _ = writeln!(
        out,
        "{:<28} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}  LAST_ERROR",
        "CHANNEL", "CONNECTED", "CONSUMED", "ACKED", "REQUEUED", "REJECTED", "RECONNECTS"
    );
    for r in rows {
        let n = |k: &str| r[k].as_u64().unwrap_or(0);
        let _ = writeln!(
            out,
            "{:<28} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}  {}",
            r["name"].as_str().unwrap_or(""),
            if r["connected"] == true { "yes" } else { "no" },
            n("consumed"),
            n("acked"),
            n("requeued"),
            n("rejected"),
            n("reconnects"),
            r["last_error"].as_str().unwrap_or("-")
        );
    }
    out
}

/// The body of `inbound put`: FILE's JSON with the password from `--secret-file` or
/// `--secret-stdin` as its `password`.
fn definition(
    name: &str,
    file: &str,
    secret_file: Option<&std::path::Path>,
    secret_stdin: bool,
) -> Result<Value, CliError> {
    let (mut def, secret) =
        super::secret::definition_and_secret(name, file, secret_file, secret_stdin, "password")?;
    if let (Some(secret), Some(obj)) = (secret, def.as_object_mut()) {
        obj.insert("password".into(), Value::String(secret));
    }
    Ok(def)
}
