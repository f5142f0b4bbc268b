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
                                @if c["source"] == "store" && matches!(c["type"].as_str(), Some("rest" | "jsonrpc") | None) {
                                    a href=(format!("/channels/{}/edit", enc(name))) aria-label=(format!("Edit channel {name}")) { "Edit" }
                                    " "
                                }
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
    form_markup(s, values, error, security, None)
}

/// The channel form: a new channel, or (`editing`: its name) an existing one's.
fn form_markup(
    s: &Session,
    values: &[(String, String)],
    error: Option<&str>,
    security: &[String],
    editing: Option<&str>,
) -> Markup {
    let action = match editing {
        Some(n) => format!("/channels/{}/edit", enc(n)),
        None => "/channels".to_owned(),
    };
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
        form.stack method="post" action=(action) novalidate {
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
                    } @else if *f == "name" && editing.is_some() {
                        input type="text" id=(id) name=(f) value=(field(values, f)) readonly;
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
            div { button type="submit" { @if editing.is_some() { "Save" } @else { "Create" } } }
        }
    }
}

/// The form's fields of a channel as the API gives it (REST or JSON-RPC).
pub fn to_form(c: &Value) -> Vec<(String, String)> {
    let list = |v: &Value| {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    let s = |v: &Value| v.as_str().unwrap_or("").to_owned();
    let mut f = vec![
        ("type".to_owned(), s(&c["type"])),
        ("name".to_owned(), s(&c["name"])),
        ("url_path".to_owned(), s(&c["url_path"])),
        (
            "service".to_owned(),
            if c["type"] == "jsonrpc" {
                list(&c["services"])
            } else {
                s(&c["service"])
            },
        ),
        ("methods".to_owned(), list(&c["methods"])),
        ("security".to_owned(), s(&c["security"])),
        ("allow_from".to_owned(), list(&c["allow_from"])),
    ];
    if c["rate_limit"].is_object() {
        f.push((
            "rate_requests".into(),
            c["rate_limit"]["requests"].to_string(),
        ));
        f.push(("rate_per_s".into(), c["rate_limit"]["per_s"].to_string()));
    }
    f
}

/// GET /channels/{name}/edit (admin; REST and JSON-RPC channels).
pub async fn edit_form(app: &Arc<App>, _r: &Req, s: &Arc<Session>, name: &str) -> Resp {
    if let Some(resp) = need(s, Role::Admin) {
        return resp;
    }
    let title = format!("Channel {name}");
    let c = match api(app, s)
        .get(&format!("/v1/channels/{}", enc(name)))
        .await
    {
        Ok(c) => c,
        Err(e) => return super::failed(s, "/channels", &title, &e),
    };
    if !matches!(c["type"].as_str(), Some("rest" | "jsonrpc") | None) {
        return crate::http::text(
            StatusCode::CONFLICT,
            "this page edits REST and JSON-RPC channels; the others with the CLI or the API",
        );
    }
    let sec = security_names(app, s).await;
    ok_page(
        s,
        "/channels",
        &title,
        form_markup(s, &to_form(&c), None, &sec, Some(name)),
    )
}

/// POST /channels/{name}/edit: the channel replaced (PUT), its name kept.
pub async fn edit(app: &Arc<App>, r: &Req, s: &Arc<Session>, name: &str) -> Resp {
    if let Some(resp) = need(s, Role::Admin) {
        return resp;
    }
    let mut f = r.form();
    f.retain(|(k, _)| k != "name");
    f.push(("name".into(), name.to_owned()));
    let title = format!("Channel {name}");
    let refused = |msg: String, sec: Vec<String>| {
        crate::http::html(
            StatusCode::BAD_REQUEST,
            super::page(
                s,
                "/channels",
                &title,
                form_markup(s, &f, Some(&msg), &sec, Some(name)),
            ),
        )
    };
    let doc = match to_json(&f) {
        Ok(d) => d,
        Err(m) => return refused(m, security_names(app, s).await),
    };
    match api(app, s)
        .send("PUT", &format!("/v1/channels/{}", enc(name)), &doc)
        .await
    {
        Ok(c) => back(
            s,
            "/channels",
            Ok(format!(
                "Channel {name} saved.{}",
                c["warning"]
                    .as_str()
                    .map(|w| format!(" Warning: {w}."))
                    .unwrap_or_default()
            )),
        ),
        Err(e) => refused(e.message, security_names(app, s).await),
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
                "Channel {} created.{}",
                c["channel"]["name"]
                    .as_str()
                    .or(doc["url_path"].as_str())
                    .unwrap_or(""),
                c["warning"]
                    .as_str()
                    .map(|w| format!(" Warning: {w}."))
                    .unwrap_or_default()
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
            let mut r = crate::http::text(StatusCode::OK, super::pretty(&doc));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => super::failed(s, "/channels", "OpenAPI", &e),
    }
}

#[cfg(test)]
mod tests {
    use super::super::form_pairs as f;

    #[test]
    fn a_channel_round_trips_through_the_form() {
        let c = serde_json::json!({"type": "rest", "name": "/o", "url_path": "/o", "service": "s.x",
            "methods": ["GET", "POST"], "allow_from": ["10.0.0.0/8"],
            "rate_limit": {"requests": 5, "per_s": 2}, "source": "store"});
        let back = super::to_json(&super::to_form(&c)).unwrap();
        assert_eq!(
            back,
            serde_json::json!({"name": "/o", "url_path": "/o", "service": "s.x",
                "methods": ["GET", "POST"], "allow_from": ["10.0.0.0/8"],
                "rate_limit": {"requests": 5, "per_s": 2}})
        );
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
