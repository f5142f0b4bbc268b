//! Channels: every kind the servers have (REST, JSON-RPC, pub/sub, WebSocket), with their
//! security definition, allow list and rate limit; a form to create a REST or JSON-RPC
//! channel (an admin's), checked by the server, whose message is shown next to the field it
//! names; delete. The servers' OpenAPI document is linked from here.

use hyper::StatusCode;
use maud::{Markup, html};
use serde_json::{Map, Value, json};
use std::sync::Arc;

use super::{Flash, api, back, csrf, flash, ok_page};
use crate::App;
use crate::api::enc;
use crate::http::{Req, Resp, field, need};
use crate::session::Session;
use crate::users::Role;

/// GET /channels
pub async fn list(app: &Arc<App>, _r: &Req, s: &Arc<Session>) -> Resp {
    let list = match api(app, s).get("/v1/channels").await {
        Ok(v) => v,
        Err(e) => return super::failed(s, "/channels", "Channels", &e),
    };
    let channels = list["channels"].as_array().cloned().unwrap_or_default();
    let body = html! {
        (flash(&Flash::take(s)))
        div.toolbar {
            @if s.role.allows(Role::Admin) { a.button href="/channels/new" { "New channel" } }
            a href="/openapi" { "OpenAPI document of the REST channels" }
        }
        table {
            thead { tr {
                th scope="col" { "Name" } th scope="col" { "Type" } th scope="col" { "Path" }
                th scope="col" { "Service" } th scope="col" { "Methods" } th scope="col" { "Security" }
                th scope="col" { "Allow list" } th scope="col" { "Rate limit" }
                @if s.role.allows(Role::Admin) { th scope="col" { span.visually-hidden { "Actions" } } }
            } }
            tbody {
                @for c in &channels {
                    @let name = c["name"].as_str().unwrap_or("?");
                    tr {
                        td { code { (name) } }
                        td { (c["type"].as_str().unwrap_or("rest")) }
                        td { code { (c["url_path"].as_str().unwrap_or("")) } }
                        td {
                            @if let Some(sv) = c["service"].as_str() {
                                a href=(format!("/services/{}", enc(sv))) { (sv) }
                            } @else if let Some(list) = c["services"].as_array() {
                                (list.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "))
                            }
                        }
                        td { (c["methods"].as_array().map(|m| m.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")).unwrap_or_default()) }
                        td { (c["security"].as_str().unwrap_or("–")) }
                        td { (c["allow_from"].as_array().map(|m| m.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")).unwrap_or_else(|| "–".into())) }
                        td { @if c["rate_limit"].is_object() { (c["rate_limit"]["requests"]) " per " (c["rate_limit"]["per_s"]) " s" } @else { "–" } }
                        @if s.role.allows(Role::Admin) {
                            td {
                                @if c["source"] == "store" {
                                    form.inline method="post" action=(format!("/channels/{}/delete", enc(name))) {
                                        (csrf(s))
                                        button.danger type="submit" aria-label=(format!("Delete channel {name}")) { "Delete" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    ok_page(s, "/channels", "Channels", body)
}

/// The form's fields, in order: (field, label, hint).
const FIELDS: &[(&str, &str, &str)] = &[
    ("name", "Name", "optional; the path when empty"),
    ("url_path", "URL path", "e.g. /orders/{id}"),
    ("service", "Service", "the service a call runs (REST)"),
    (
        "methods",
        "Methods",
        "comma-separated, e.g. GET, POST (REST; empty: any)",
    ),
    (
        "security",
        "Security definition",
        "optional: the name of one",
    ),
    (
        "allow_from",
        "Allow list",
        "optional: comma-separated addresses or networks",
    ),
    ("rate_requests", "Rate limit: requests", "optional"),
    ("rate_per_s", "Rate limit: per seconds", "optional"),
];

fn new_markup(
    s: &Session,
    values: &[(String, String)],
    error: Option<&str>,
    security: &[String],
) -> Markup {
    // The field the server's message names, to show it there.
    let at = error.and_then(|e| {
        FIELDS
            .iter()
            .map(|(f, _, _)| *f)
            .filter(|f| !f.starts_with("rate_"))
            .find(|f| e.contains(f))
            .or_else(|| e.contains("rate_limit").then_some("rate_requests"))
    });
    let kind = field(values, "type");
    html! {
        @if let Some(e) = error {
            div.flash.error role="alert" id="form-error" { "The server refused the channel: " (e) }
        }
        form.stack method="post" action="/channels" novalidate {
            (csrf(s))
            div {
                label for="type" { "Type" }
                select id="type" name="type" {
                    option value="rest" selected[kind != "jsonrpc"] { "REST" }
                    option value="jsonrpc" selected[kind == "jsonrpc"] { "JSON-RPC" }
                }
            }
            @for (f, label, hint) in FIELDS {
                @let id = format!("f-{f}");
                div {
                    label for=(id) { (label) " " span.muted { "(" (hint) ")" } }
                    @if *f == "security" && !security.is_empty() {
                        select id=(id) name=(f) {
                            option value="" { "none" }
                            @for d in security { option value=(d) selected[field(values, f) == d] { (d) } }
                        }
                    } @else {
                        input type="text" id=(id) name=(f) value=(field(values, f))
                            aria-invalid=[(at == Some(*f)).then_some("true")]
                            aria-describedby=[(at == Some(*f)).then_some("field-error")];
                    }
                    @if at == Some(*f) {
                        div.field-error id="field-error" { (error.unwrap_or("")) }
                    }
                }
            }
            div { button type="submit" { "Create" } }
        }
    }
}

async fn security_names(app: &App, s: &Session) -> Vec<String> {
    api(app, s)
        .get("/v1/security")
        .await
        .ok()
        .and_then(|v| {
            v.as_object()
                .and_then(|o| o.values().find_map(Value::as_array).cloned())
                .or_else(|| v.as_array().cloned())
        })
        .unwrap_or_default()
        .iter()
        .filter_map(|d| d["name"].as_str().map(str::to_owned))
        .collect()
}

/// GET /channels/new
pub async fn new_form(app: &Arc<App>, _r: &Req, s: &Arc<Session>) -> Resp {
    if let Some(resp) = need(s, Role::Admin) {
        return resp;
    }
    let sec = security_names(app, s).await;
    ok_page(
        s,
        "/channels",
        "New channel",
        new_markup(s, &[], None, &sec),
    )
}

/// The API's JSON for the form, or what is wrong with a field.
pub fn to_json(f: &[(String, String)]) -> Result<Value, String> {
    let mut o = Map::new();
    let kind = field(f, "type");
    let get = |k: &str| field(f, k).trim().to_owned();
    if kind == "jsonrpc" {
        o.insert("type".into(), json!("jsonrpc"));
    }
    for k in ["name", "url_path", "security"] {
        let v = get(k);
        if !v.is_empty() {
            o.insert(k.into(), json!(v));
        }
    }
    let service = get("service");
    if kind == "jsonrpc" {
        if !service.is_empty() {
            o.insert(
                "services".into(),
                json!(
                    service
                        .split(',')
                        .map(str::trim)
                        .filter(|x| !x.is_empty())
                        .collect::<Vec<_>>()
                ),
            );
        }
    } else {
        o.insert("service".into(), json!(service));
        let methods: Vec<String> = get("methods")
            .split(',')
            .map(|m| m.trim().to_uppercase())
            .filter(|m| !m.is_empty())
            .collect();
        if !methods.is_empty() {
            o.insert("methods".into(), json!(methods));
        }
    }
    let allow: Vec<String> = get("allow_from")
        .split(',')
        .map(|a| a.trim().to_owned())
        .filter(|a| !a.is_empty())
        .collect();
    if !allow.is_empty() {
        o.insert("allow_from".into(), json!(allow));
    }
    let (req, per) = (get("rate_requests"), get("rate_per_s"));
    if !req.is_empty() || !per.is_empty() {
        let n = |v: &str, what: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("rate_limit: {what} must be a whole number, not {v:?}"))
        };
        o.insert(
            "rate_limit".into(),
            json!({"requests": n(&req, "requests")?, "per_s": n(if per.is_empty() { "1" } else { &per }, "per seconds")?}),
        );
    }
    Ok(Value::Object(o))
}

/// POST /channels
pub async fn create(app: &Arc<App>, r: &Req, s: &Arc<Session>) -> Resp {
    if let Some(resp) = need(s, Role::Admin) {
        return resp;
    }
    let f = r.form();
    let refused = |msg: String, sec: Vec<String>| {
        crate::http::html(
            StatusCode::BAD_REQUEST,
            super::page(
                s,
                "/channels",
                "New channel",
                new_markup(s, &f, Some(&msg), &sec),
            ),
        )
    };
    let doc = match to_json(&f) {
        Ok(d) => d,
        Err(m) => return refused(m, security_names(app, s).await),
    };
    match api(app, s).send("POST", "/v1/channels", &doc).await {
        Ok(c) => back(
            s,
            "/channels",
            Ok(format!(
                "Channel {} created.",
                c["name"]
                    .as_str()
                    .or(doc["url_path"].as_str())
                    .unwrap_or("")
            )),
        ),
        Err(e) => refused(e.message, security_names(app, s).await),
    }
}

/// POST /channels/{name}/delete
pub async fn delete(app: &Arc<App>, _r: &Req, s: &Arc<Session>, name: &str) -> Resp {
    if let Some(resp) = need(s, Role::Admin) {
        return resp;
    }
    match api(app, s)
        .call(
            "DELETE",
            &format!("/v1/channels/{}", enc(name)),
            bytes::Bytes::new(),
            "application/json",
        )
        .await
    {
        Ok(_) => back(s, "/channels", Ok(format!("Channel {name} deleted."))),
        Err(e) => back(
            s,
            "/channels",
            Err(format!("Channel {name} not deleted: {e}")),
        ),
    }
}

/// GET /openapi: the servers' OpenAPI document of the REST channels, as JSON.
pub async fn openapi(app: &Arc<App>, s: &Arc<Session>) -> Resp {
    match api(app, s).get("/v1/openapi").await {
        Ok(doc) => {
            let mut r = crate::http::text(StatusCode::OK, pretty_json(&doc));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => super::failed(s, "/channels", "OpenAPI", &e),
    }
}

fn pretty_json(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    fn f(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn the_form_becomes_the_apis_json() {
        let j = super::to_json(&f(&[
            ("type", "rest"),
            ("url_path", "/o"),
            ("service", "s.x"),
            ("methods", "get, post"),
            ("allow_from", "10.0.0.0/8"),
            ("rate_requests", "5"),
            ("rate_per_s", ""),
        ]))
        .unwrap();
        assert_eq!(
            j,
            serde_json::json!({"url_path": "/o", "service": "s.x", "methods": ["GET", "POST"],
                "allow_from": ["10.0.0.0/8"], "rate_limit": {"requests": 5, "per_s": 1}})
        );
        let e = super::to_json(&f(&[("url_path", "/o"), ("rate_requests", "x")])).unwrap_err();
        assert!(e.contains("rate_limit"), "{e}");
    }
}
