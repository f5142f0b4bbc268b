//! `oxbus websocket clients [--channel NAME]` (`GET /v1/websocket/clients`): the WebSocket
//! clients connected to every server, as a table or as the server sent it (`--json`);
//! `oxbus websocket disconnect ID` (`DELETE /v1/websocket/clients/{id}`): close one.

use serde_json::Value;
use tokio::runtime::Runtime;

use super::CliError;
use super::args::WebsocketAction;
use super::client::{call, percent_encode};
use super::format::{print, utc};

pub fn command(rt: &Runtime, action: &WebsocketAction) -> Result<(), CliError> {
    match action {
        WebsocketAction::Clients {
            to,
            channel,
            output,
        } => {
            let path = match channel {
                Some(c) => format!("/v1/websocket/clients?channel={}", percent_encode(c)),
                None => "/v1/websocket/clients".to_owned(),
            };
            let answer = call(rt, to, "GET", &path, Vec::new())?;
            print(answer, *output, |d| print!("{}", table(d)));
            Ok(())
        }
        WebsocketAction::Disconnect {
            to,
            client_id,
            output,
        } => {
            let path = format!("/v1/websocket/clients/{}", percent_encode(client_id));
            let answer = call(rt, to, "DELETE", &path, Vec::new())?;
            print(answer, *output, |_| println!("disconnected {client_id}"));
            Ok(())
        }
    }
}

/// The text table of a clients document: one line per client, then one per server that
/// did not answer.
pub fn table(d: &Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<34} {:<16} {:<10} {:<5} {:<16} {:<20} {:<23} {:>6} {:>6}",
        "CLIENT_ID", "CHANNEL", "SERVER", "PROTO", "REMOTE", "WHO", "CONNECTED", "IN", "OUT"
    );
    let mut silent = Vec::new();
    for (server, s) in d["servers"].as_object().into_iter().flatten() {
        if s["answered"] != true {
            silent.push(format!(
                "{server}: no answer: {}",
                s["error"].as_str().unwrap_or("no answer")
            ));
            continue;
        }
        for c in s["clients"].as_array().into_iter().flatten() {
            let who = match &c["security"] {
                Value::Object(w) => w
                    .get("username")
                    .and_then(Value::as_str)
                    .or_else(|| w.get("subject").and_then(Value::as_str))
                    .or_else(|| w.get("name").and_then(Value::as_str))
                    .unwrap_or("")
                    .to_owned(),
                _ if c["authenticated"] == false => "(not yet)".to_owned(),
                _ => "-".to_owned(),
            };
            let _ = writeln!(
                out,
                "{:<34} {:<16} {:<10} {:<5} {:<16} {:<20} {:<23} {:>6} {:>6}",
                c["client_id"].as_str().unwrap_or(""),
                c["channel"].as_str().unwrap_or(""),
                server,
                c["protocol"].as_str().unwrap_or(""),
                c["remote_addr"].as_str().unwrap_or("-"),
                who,
                c["connected_at_ms"].as_i64().map(utc).unwrap_or_default(),
                c["messages_in"].as_u64().unwrap_or(0),
                c["messages_out"].as_u64().unwrap_or(0),
            );
        }
    }
    for s in silent {
        let _ = writeln!(out, "{s}");
    }
    let _ = writeln!(out, "{} connected", d["count"].as_u64().unwrap_or(0));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lists_clients_and_silent_servers() {
        let d = serde_json::json!({"count": 1, "servers": {
            "s1": {"answered": true, "clients": [{"client_id": "ws.s1.0123456789abcdef",
                "channel": "chat", "protocol": "zato", "remote_addr": "10.0.0.7",
                "connected_at_ms": 0, "authenticated": true,
                "security": {"name": "d", "type": "basic", "username": "ann"},
                "messages_in": 3, "messages_out": 4}]},
            "s2": {"answered": false, "error": "no answer within 2 s"}}});
        let t = table(&d);
        assert!(t.contains("ws.s1.0123456789abcdef"), "{t}");
        assert!(
            t.contains("ann") && t.contains("zato") && t.contains("10.0.0.7"),
            "{t}"
        );
        assert!(t.contains("s2: no answer: no answer within 2 s"), "{t}");
        assert!(t.contains("1 connected"), "{t}");
    }
}
