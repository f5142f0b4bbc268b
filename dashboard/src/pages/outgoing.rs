//! Outgoing connections (REST, SQL, AMQP, MQTT, Redis) and inbound channels (AMQP, MQTT,
//! file): every definition as the admin API lists it — never a credential, only whether one
//! is stored — with the first server's figures of each; a connection's ping (deployer).
//! Read-only otherwise: definitions are changed with `oxbus out|inbound put` or the admin API.

use hyper::{Method, StatusCode};
use maud::{Markup, html};
use serde_json::Value;
use std::sync::Arc;

use super::{Flash, api, back, csrf, flash, num, ok_page};
use crate::App;
use crate::api::{ApiError, enc};
use crate::http::{Req, Resp, need};
use crate::session::Session;
use crate::users::Role;

const TITLE: &str = "Outgoing connections";

/// The outgoing connection types: the admin API's path segment (and list key), the title.
const OUTGOING: &[(&str, &str)] = &[
    ("rest", "REST"),
    ("sql", "SQL"),
    ("amqp", "AMQP"),
    ("mqtt", "MQTT"),
    ("redis", "Redis"),
];

/// The inbound channel types, as [`OUTGOING`].
const INBOUND: &[(&str, &str)] = &[
    ("amqp", "AMQP"),
    ("mqtt", "MQTT"),
    ("file", "File transfer"),
];

/// Fields never shown, at any depth: the admin API answers none of them (`has_secret`
/// instead), and should one ever appear it stays off the page.
const CREDENTIALS: &[&str] = &[
    "sealed",
    "password",
    "client_secret",
    "token",
    "key",
    "secret",
];

/// The paths of this page: `GET /outgoing`, `POST /outgoing/{type}/{name}/ping`; `None` for
/// any other.
pub async fn route(app: &Arc<App>, r: &Req, s: &Arc<Session>, segs: &[&str]) -> Option<Resp> {
    let get = r.method == Method::GET;
    let post = r.method == Method::POST;
    match segs {
        ["outgoing"] if get => Some(list(app, s).await),
        ["outgoing", kind, name, "ping"] if post => Some(ping(app, s, kind, name).await),
        _ => None,
    }
}

/// GET /outgoing
async fn list(app: &Arc<App>, s: &Arc<Session>) -> Resp {
    let a = api(app, s);
    let a = &a;
    let (out, inb) = tokio::join!(
        futures_util::future::join_all(
            OUTGOING
                .iter()
                .map(|(k, _)| async move { a.get(&format!("/v1/outgoing/{k}")).await }),
        ),
        futures_util::future::join_all(
            INBOUND
                .iter()
                .map(|(k, _)| async move { a.get(&format!("/v1/inbound/{k}")).await }),
        ),
    );
    // A refused token ends the session (`failed`); any other error stays in its section.
    if let Some(e) = out
        .iter()
        .chain(inb.iter())
        .filter_map(|r| r.as_ref().err())
        .find(|e| e.status == Some(401))
    {
        return super::failed(s, "/outgoing", TITLE, e);
    }
    let server = app
        .settings
        .servers
        .first()
        .map(String::as_str)
        .unwrap_or("?");
    let body = html! {
        (flash(&Flash::take(s)))
        p.muted {
            "Definitions as the config store has them (credentials are never shown: only whether one is stored). "
            "Figures and pings are server " code { (server) } "'s: each server keeps its own, since it started or since the definition last changed."
        }
        h2 { "Outgoing connections" }
        @for ((kind, title), res) in OUTGOING.iter().zip(&out) {
            (outgoing_section(s, kind, title, res))
        }
        h2 { "Inbound channels" }
        @for ((kind, title), res) in INBOUND.iter().zip(&inb) {
            (inbound_section(kind, title, res))
        }
    };
    ok_page(s, "/outgoing", TITLE, body)
}

fn outgoing_section(s: &Session, kind: &str, title: &str, res: &Result<Value, ApiError>) -> Markup {
    let id = format!("out-{kind}");
    let pinger = s.role.allows(Role::Deployer);
    html! {
        h3 id=(id) { (title) }
        @match res {
            Err(e) => div.flash.error role="alert" { (e.to_string()) },
            Ok(v) => {
                @let list = v[kind].as_array().cloned().unwrap_or_default();
                @if list.is_empty() {
                    p.muted { "No " (title) " connection." }
                } @else {
                    table aria-labelledby=(id) {
                        thead { tr {
                            th scope="col" { "Connection" } th scope="col" { "Address" }
                            th scope="col" { "Credential" } th scope="col" { "Settings" }
                            th.num scope="col" { "Calls" } th.num scope="col" { "Errors" }
                            th.num scope="col" { "Mean latency" }
                            th.num scope="col" { "In use / idle / pool" } th.num scope="col" { "Waiting" }
                            @if pinger { th scope="col" { span.visually-hidden { "Actions" } } }
                        } }
                        tbody {
                            @for c in &list {
                                @let name = c["name"].as_str().unwrap_or("?");
                                @let st = &c["stats"];
                                tr {
                                    td { (name) }
                                    td { code { (address(kind, c)) } }
                                    td { (credential(kind, c)) }
                                    td { (dl(&fields(c, &["name", "address", "url", "engine", "has_secret", "stats", "auth.type"]))) }
                                    @if st.is_object() {
                                        td.num { (count(&st["calls"])) }
                                        td class=(if st["errors"].as_u64().unwrap_or(0) > 0 { "num state-bad" } else { "num" }) { (count(&st["errors"])) }
                                        td.num { @match mean_ms(st) { Some(ms) => { (format!("{ms:.1}")) " ms" }, None => span.muted { "–" } } }
                                        td.num { (count(&st["in_use"])) " / " (count(&st["idle"])) " / " (count(&st["pool_size"])) }
                                        td.num { (count(&st["waiting"])) }
                                    } @else {
                                        td.muted colspan="5" { "Not applied on this server yet." }
                                    }
                                    @if pinger {
                                        td {
                                            form.inline method="post" action=(format!("/outgoing/{kind}/{}/ping", enc(name))) {
                                                (csrf(s))
                                                button.secondary type="submit" aria-label=(format!("Ping {name} ({title})")) { "Ping" }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            },
        }
    }
}

fn inbound_section(kind: &str, title: &str, res: &Result<Value, ApiError>) -> Markup {
    let id = format!("in-{kind}");
    html! {
        h3 id=(id) { (title) }
        @match res {
            Err(e) if e.status == Some(403) => p.muted {
                "Not shown: the admin API gives these to a role above yours (" (e.to_string()) ")."
            },
            Err(e) => div.flash.error role="alert" { (e.to_string()) },
            Ok(v) => {
                @let list = v[kind].as_array().cloned().unwrap_or_default();
                @if list.is_empty() {
                    p.muted { "No " (title) " channel." }
                } @else {
                    table aria-labelledby=(id) {
                        thead { tr {
                            th scope="col" { "Channel" } th scope="col" { "From" }
                            th scope="col" { "Service" } th scope="col" { "Credential" }
                            th scope="col" { "Settings" } th scope="col" { "State" }
                            th scope="col" { "Figures" } th scope="col" { "Last error" }
                        } }
                        tbody {
                            @for c in &list {
                                @let st = &c["status"];
                                @let (state, tone) = inbound_state(st);
                                tr {
                                    td { (c["name"].as_str().unwrap_or("?")) }
                                    td { code { (address(kind, c)) } }
                                    td { (c["service"].as_str().unwrap_or("")) }
                                    td { (credential(kind, c)) }
                                    td { (dl(&fields(c, &["name", "address", "directories", "service", "has_secret", "status"]))) }
                                    td class=(tone.class()) { (state) }
                                    td { @if st.is_object() { (dl(&fields(st, &["name", "running", "connected", "subscribed", "state", "last_error"]))) } }
                                    td { (st["last_error"].as_str().unwrap_or("")) }
                                }
                            }
                        }
                    }
                }
            },
        }
    }
}

/// POST /outgoing/{type}/{name}/ping
async fn ping(app: &Arc<App>, s: &Arc<Session>, kind: &str, name: &str) -> Resp {
    if !OUTGOING.iter().any(|(k, _)| *k == kind) {
        return crate::http::text(StatusCode::NOT_FOUND, "no such connection type");
    }
    if let Some(resp) = need(s, Role::Deployer) {
        return resp;
    }
    match api(app, s)
        .send(
            "POST",
            &format!("/v1/outgoing/{kind}/{}/ping", enc(name)),
            &Value::Null,
        )
        .await
    {
        Ok(v) => back(s, "/outgoing", ping_message(kind, name, &v)),
        Err(e) => back(
            s,
            "/outgoing",
            Err(format!("Ping of {kind} connection {name} refused: {e}")),
        ),
    }
}

/// What a ping's answer (`{ok, took_ms, detail}`) tells: `Ok` when the remote answered.
fn ping_message(kind: &str, name: &str, v: &Value) -> Result<String, String> {
    let took = v["took_ms"].as_f64().unwrap_or(0.0);
    let detail = v["detail"].as_str().unwrap_or("");
    let detail = if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    };
    if v["ok"] == true {
        Ok(format!(
            "Ping {kind} {name}: answered in {took:.1} ms{detail}."
        ))
    } else {
        Err(format!(
            "Ping {kind} {name}: failed after {took:.1} ms{detail}."
        ))
    }
}

/// Where a definition goes or reads from: an SQL connection's engine and URL, a file
/// channel's directories, else `address`.
fn address(kind: &str, def: &Value) -> String {
    match kind {
        "sql" => format!(
            "{} {}",
            def["engine"].as_str().unwrap_or(""),
            def["url"].as_str().unwrap_or("")
        )
        .trim()
        .to_owned(),
        "file" => show(&def["directories"]),
        _ => def["address"].as_str().unwrap_or("").to_owned(),
    }
}

/// Whether a credential is stored (never what it is); a REST connection's auth type first.
fn credential(kind: &str, def: &Value) -> String {
    let stored = def["has_secret"] == true;
    if kind == "rest" {
        let auth = def["auth"]["type"].as_str().unwrap_or("none");
        return match (auth, stored) {
            ("none", _) => "none".into(),
            (a, true) => format!("{a}, secret stored"),
            (a, false) => format!("{a}, no secret stored"),
        };
    }
    if kind == "file" {
        return "none".into();
    }
    if stored {
        "password stored".into()
    } else {
        "none".into()
    }
}

/// A definition's fields as (dotted name, text), nested objects flattened (`tls.verify`),
/// nulls and empty objects left out, as are `skip` (dotted names) and every credential
/// field at any depth.
fn fields(v: &Value, skip: &[&str]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    flatten("", v, skip, &mut out);
    out
}

fn flatten(prefix: &str, v: &Value, skip: &[&str], out: &mut Vec<(String, String)>) {
    let Some(obj) = v.as_object() else {
        return;
    };
    for (k, x) in obj {
        if CREDENTIALS.contains(&k.as_str()) {
            continue;
        }
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        if skip.contains(&path.as_str()) {
            continue;
        }
        match x {
            Value::Null => {}
            Value::Object(m) if m.is_empty() => {}
            Value::Object(_) => flatten(&path, x, skip, out),
            other => out.push((path, show(other))),
        }
    }
}

/// One value as text: numbers as [`num`] writes them, booleans yes/no, a list's items
/// joined (an object item as `k=v` pairs, credentials left out).
fn show(v: &Value) -> String {
    match v {
        Value::Null => "–".into(),
        Value::Bool(b) => if *b { "yes" } else { "no" }.into(),
        Value::Number(n) => n.as_f64().map_or_else(|| n.to_string(), num),
        Value::String(s) if s.is_empty() => "–".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.is_empty() => "none".into(),
        Value::Array(a) => a
            .iter()
            .map(|x| match x {
                Value::Object(_) => fields(x, &[])
                    .into_iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                other => show(other),
            })
            .collect::<Vec<_>>()
            .join(", "),
        Value::Object(_) => fields(v, &[])
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" "),
    }
}

fn dl(fields: &[(String, String)]) -> Markup {
    html! {
        @if !fields.is_empty() {
            dl.fields {
                @for (k, v) in fields {
                    dt { (k) } dd { (v) }
                }
            }
        }
    }
}

/// A counter of the figures (`–` when absent).
fn count(v: &Value) -> String {
    v.as_f64().map_or_else(|| "–".into(), num)
}

/// A connection's mean call duration, milliseconds (none before its first call).
fn mean_ms(stats: &Value) -> Option<f64> {
    let n = stats["latency_count"].as_f64().filter(|n| *n > 0.0)?;
    Some(stats["latency_sum_s"].as_f64().unwrap_or(0.0) * 1000.0 / n)
}

/// How a state reads: well, badly, or neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tone {
    Ok,
    Bad,
    Neutral,
}

impl Tone {
    fn class(self) -> &'static str {
        match self {
            Tone::Ok => "state-ok",
            Tone::Bad => "state-bad",
            Tone::Neutral => "muted",
        }
    }
}

/// An inbound channel's state on this server from its `status`: a file channel's `state`;
/// an AMQP or MQTT channel's running, connected and (MQTT) subscribed.
fn inbound_state(status: &Value) -> (String, Tone) {
    if !status.is_object() {
        return ("not applied on this server yet".into(), Tone::Neutral);
    }
    if let Some(state) = status["state"].as_str() {
        let tone = match state {
            "holding" | "standby" => Tone::Ok,
            "error" => Tone::Bad,
            _ => Tone::Neutral,
        };
        return (state.to_owned(), tone);
    }
    if status["running"] == false {
        return ("not running".into(), Tone::Neutral);
    }
    if status["connected"] != true {
        return ("disconnected".into(), Tone::Bad);
    }
    if status["subscribed"] == false {
        return ("connected, not subscribed".into(), Tone::Bad);
    }
    ("connected".into(), Tone::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_flatten_and_never_show_credentials() {
        let def = json!({
            "name": "crm", "address": "https://h", "timeout_ms": 5000, "has_secret": true,
            "auth": {"type": "basic", "username": "u", "sealed": "oxbus1:xyz", "password": "p"},
            "tls": {"verify": true}, "headers": {}, "scope": null, "token": "t",
            "topics": [{"filter": "a/#", "qos": 1}], "patterns": [], "stats": {"calls": 1}
        });
        let f = fields(
            &def,
            &["name", "address", "has_secret", "stats", "auth.type"],
        );
        let text: Vec<String> = f.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(
            text,
            vec![
                "auth.username=u",
                "patterns=none",
                "timeout_ms=5,000",
                "tls.verify=yes",
                "topics=filter=a/# qos=1",
            ]
        );
        let all = format!("{f:?}");
        assert!(!all.contains("oxbus1") && !all.contains("\"p\"") && !all.contains("=t"));
    }

    #[test]
    fn address_and_credential() {
        let sql = json!({"engine": "postgresql", "url": "postgres://app@h/db", "has_secret": true});
        assert_eq!(address("sql", &sql), "postgresql postgres://app@h/db");
        assert_eq!(credential("sql", &sql), "password stored");
        let file = json!({"directories": ["/in", "/in2"]});
        assert_eq!(address("file", &file), "/in, /in2");
        assert_eq!(credential("file", &file), "none");
        let rest = json!({"address": "https://h", "auth": {"type": "bearer"}, "has_secret": true});
        assert_eq!(address("rest", &rest), "https://h");
        assert_eq!(credential("rest", &rest), "bearer, secret stored");
        assert_eq!(
            credential("rest", &json!({"auth": {"type": "none"}})),
            "none"
        );
        assert_eq!(credential("redis", &json!({"has_secret": false})), "none");
    }

    #[test]
    fn ping_outcomes_and_latency() {
        let ok = json!({"ok": true, "took_ms": 12.34, "detail": "HTTP 200"});
        assert_eq!(
            ping_message("rest", "crm", &ok),
            Ok("Ping rest crm: answered in 12.3 ms: HTTP 200.".into())
        );
        let bad = json!({"ok": false, "took_ms": 3, "detail": "connect: refused"});
        assert_eq!(
            ping_message("sql", "db", &bad),
            Err("Ping sql db: failed after 3.0 ms: connect: refused.".into())
        );
        assert_eq!(
            mean_ms(&json!({"latency_count": 0, "latency_sum_s": 0.0})),
            None
        );
        assert_eq!(
            mean_ms(&json!({"latency_count": 4, "latency_sum_s": 0.2})),
            Some(50.0)
        );
        assert_eq!(count(&json!(1234)), "1,234");
        assert_eq!(count(&Value::Null), "–");
    }

    #[test]
    fn inbound_states() {
        assert_eq!(inbound_state(&Value::Null).1, Tone::Neutral);
        assert_eq!(
            inbound_state(&json!({"state": "holding"})),
            ("holding".into(), Tone::Ok)
        );
        assert_eq!(inbound_state(&json!({"state": "error"})).1, Tone::Bad);
        assert_eq!(
            inbound_state(&json!({"running": false, "connected": false})),
            ("not running".into(), Tone::Neutral)
        );
        assert_eq!(
            inbound_state(&json!({"running": true, "connected": false})).1,
            Tone::Bad
        );
        assert_eq!(
            inbound_state(&json!({"running": true, "connected": true, "subscribed": false})).1,
            Tone::Bad
        );
        assert_eq!(
            inbound_state(&json!({"running": true, "connected": true})),
            ("connected".into(), Tone::Ok)
        );
    }
}
