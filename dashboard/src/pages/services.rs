//! Services: the list with search (htmx swaps the rows as one types) and each server's
//! figures; a service's page with its figures per server, its module's deployed source and
//! version history (a diff against the version before, rollback), the last error with its
//! cid, and an invoke form (JSON in, the answer out, in place).

use bytes::Bytes;
use hyper::StatusCode;
use maud::{Markup, html};
use serde_json::Value;
use std::sync::Arc;

use super::{Flash, api, back, csrf, flash, num, ok_page, when};
use crate::App;
use crate::api::enc;
use crate::http::{Req, Resp, field, need};
use crate::session::Session;
use crate::users::Role;

/// The figures of `service` in one server's stats document, over the 15-minute window.
fn window<'a>(server: &'a Value, service: &str) -> Option<&'a Value> {
    server["services"]
        .get(service)
        .map(|s| &s["windows"]["15m"])
}

fn ms(v: &Value) -> String {
    v.as_f64().map_or("–".into(), |x| format!("{x:.2} ms"))
}

/// GET /services?q=
pub async fn list(app: &Arc<App>, r: &Req, s: &Arc<Session>) -> Resp {
    let q = r.q("q").unwrap_or("").trim().to_lowercase();
    let a = api(app, s);
    let (services, figures) = tokio::join!(a.get("/v1/services"), app.figures.get(a.clone()));
    let services = match services {
        Ok(v) => v,
        Err(e) => return super::failed(s, "/services", "Services", &e),
    };
    let (stats, age) = match figures {
        Ok((doc, age)) => (doc, Some(age)),
        Err(_) => (std::sync::Arc::new(Value::Null), None),
    };
    let mut list: Vec<Value> = services["services"].as_array().cloned().unwrap_or_default();
    list.retain(|sv| {
        q.is_empty()
            || sv["name"]
                .as_str()
                .is_some_and(|n| n.to_lowercase().contains(&q))
    });
    list.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let servers: Vec<(String, Value)> = stats["servers"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let total = |name: &str, key: &str| -> f64 {
        servers
            .iter()
            .filter_map(|(_, sv)| window(sv, name)?[key].as_f64())
            .sum()
    };
    let body = html! {
        (flash(&Flash::take(s)))
        form.toolbar role="search" method="get" action="/services" {
            div {
                label for="q" { "Search services" }
                input type="search" id="q" name="q" value=(q) placeholder="name contains…"
                    hx-get="/services" hx-trigger="input changed delay:250ms, search"
                    hx-target="#services-rows" hx-select="#services-rows" hx-swap="outerHTML"
                    hx-push-url="true";
            }
            button.secondary type="submit" { "Search" }
            @if s.role.allows(Role::Deployer) {
                a.button href="/deploy" { "Deploy a module" }
            }
        }
        p.muted {
            @match age {
                Some(a) => { "Figures over the last 15 minutes, all servers, as of " (a.as_secs()) " s ago (refreshed every " (crate::figures::FRESH.as_secs()) " s)." }
                None => "The servers' figures did not come.",
            }
        }
        table {
            caption.visually-hidden { "Services; figures over the last 15 minutes, all servers" }
            thead { tr {
                th scope="col" { "Service" } th scope="col" { "Module" } th scope="col" { "Version" }
                th.num scope="col" { "Calls (15 min)" } th.num scope="col" { "Errors" }
                th scope="col" { "Deployed" }
            } }
            tbody id="services-rows" {
                @for sv in &list {
                    @let name = sv["name"].as_str().unwrap_or("?");
                    tr {
                        td { a href=(format!("/services/{}", enc(name))) { (name) } }
                        td { code { (sv["module"].as_str().unwrap_or("")) } }
                        td { (sv["version"].as_i64().map_or("–".into(), |v| v.to_string())) }
                        td.num { (num(total(name, "calls"))) }
                        td.num { (num(total(name, "errors"))) }
                        td {
                            @if let Some(at) = sv["deployed_at_ms"].as_i64() {
                                (when(at)) " by " (sv["deployed_by"].as_str().unwrap_or("?"))
                            } @else {
                                span.muted { "from the services directory" }
                            }
                        }
                    }
                }
                @if list.is_empty() {
                    tr { td colspan="6" { "No service matches." } }
                }
            }
        }
    };
    ok_page(s, "/services", "Services", body)
}

/// The services list's row of `name`, if the server runs it.
async fn find(app: &App, s: &Session, name: &str) -> Result<Option<Value>, crate::api::ApiError> {
    let all = api(app, s).get("/v1/services").await?;
    Ok(all["services"]
        .as_array()
        .and_then(|l| l.iter().find(|x| x["name"] == name).cloned()))
}

/// GET /services/{name}
pub async fn detail(app: &Arc<App>, _r: &Req, s: &Arc<Session>, name: &str) -> Resp {
    let title = format!("Service {name}");
    let sv = match find(app, s, name).await {
        Ok(Some(sv)) => sv,
        Ok(None) => {
            return super::failed(
                s,
                "/services",
                &title,
                &crate::api::ApiError {
                    status: Some(404),
                    message: format!("no server runs a service named {name}"),
                    doc: None,
                },
            );
        }
        Err(e) => return super::failed(s, "/services", &title, &e),
    };
    let a = api(app, s);
    let module = sv["module"].as_str().unwrap_or("").to_owned();
    let deployed = sv["origin"] == "deployed";
    let stats = a
        .get(&format!("/v1/services/{}/stats", enc(name)))
        .await
        .unwrap_or(Value::Null);
    let (source, versions) = if deployed {
        let m = enc(&module);
        let (p1, p2) = (
            format!("/v1/modules/{m}"),
            format!("/v1/modules/{m}/versions"),
        );
        let (src, vers) = tokio::join!(a.get(&p1), a.get(&p2));
        (src.ok(), vers.ok())
    } else {
        (None, None)
    };
    let servers: Vec<(String, Value)> = stats["servers"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let body = html! {
        (flash(&Flash::take(s)))
        p { "Module " code { (module) } " · class " code { (sv["class"].as_str().unwrap_or("")) }
            @if deployed { " · version " (sv["version"]) " deployed " (when(sv["deployed_at_ms"].as_i64().unwrap_or(0))) " by " (sv["deployed_by"].as_str().unwrap_or("?")) }
            @else { " · loaded from the services directory (not deployed through the API)" } }
        h2 { "Figures" }
        table {
            thead { tr {
                th scope="col" { "Server" } th scope="col" { "Window" } th.num scope="col" { "Calls" } th.num scope="col" { "Errors" }
                th.num scope="col" { "Mean" } th.num scope="col" { "p50" } th.num scope="col" { "p99" }
            } }
            tbody {
                @for (server, st) in &servers {
                    @if st["answered"] != true {
                        tr { td { (server) } td colspan="6" { span.state-bad { "did not answer: " } (st["error"].as_str().unwrap_or("")) } }
                    } @else {
                        @for w in ["1m", "5m", "15m"] {
                            @let x = &st["services"][name]["windows"][w];
                            tr {
                                td { (server) } td { (w) }
                                td.num { (num(x["calls"].as_f64().unwrap_or(0.0))) }
                                td.num { (num(x["errors"].as_f64().unwrap_or(0.0))) }
                                td.num { (ms(&x["mean_ms"])) } td.num { (ms(&x["p50_ms"])) } td.num { (ms(&x["p99_ms"])) }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Last errors" }
        @let errors: Vec<(&String, &Value)> = servers.iter().filter_map(|(sv, st)| {
            let e = &st["services"][name]["last_error"];
            (!e.is_null()).then_some((sv, e))
        }).collect();
        @if errors.is_empty() {
            p { "No error since the servers started." }
        } @else {
            table {
                thead { tr { th scope="col" { "Server" } th scope="col" { "When" } th scope="col" { "Status" } th scope="col" { "Kind" } th scope="col" { "cid" } } }
                tbody {
                    @for (server, e) in errors {
                        tr { td { (server) } td { (when(e["at_ms"].as_i64().unwrap_or(0))) } td { (e["status"]) }
                             td { (e["family"].as_str().unwrap_or("")) } td { code { (e["cid"].as_str().unwrap_or("")) } } }
                    }
                }
            }
        }
        h2 { "Invoke" }
        @if s.role.allows(Role::Deployer) {
            (invoke_form(s, name, "{}", None))
        } @else {
            p.muted { "Invoking a service needs the deployer role." }
        }
        @if let Some(src) = &source {
            h2 { "Source of " code { (module) } ", version " (src["version"]) }
            pre { code { (src["source"].as_str().unwrap_or("")) } }
        }
        @if let Some(v) = &versions {
            h2 { "Version history" }
            (history(s, &module, v))
        }
    };
    ok_page(s, "/services", &title, body)
}

fn history(s: &Session, module: &str, v: &Value) -> Markup {
    let list = v["versions"].as_array().cloned().unwrap_or_default();
    let active_pos = list.iter().position(|x| x["active"] == true);
    html! {
        table {
            thead { tr { th scope="col" { "Version" } th scope="col" { "Deployed" } th scope="col" { "By" } th scope="col" { "State" } th scope="col" { "Changes" } } }
            tbody {
                @for (i, x) in list.iter().enumerate() {
                    @let ver = x["version"].as_i64().unwrap_or(0);
                    tr {
                        td { (ver) }
                        td { (when(x["deployed_at_ms"].as_i64().unwrap_or(0))) }
                        td { (x["deployed_by"].as_str().unwrap_or("")) }
                        td { @if x["active"] == true { strong { "active" } } }
                        td {
                            @if i + 1 < list.len() {
                                a href=(format!("/modules/{}/diff?version={ver}", enc(module))) { "diff with " (list[i + 1]["version"]) }
                            }
                        }
                    }
                }
            }
        }
        @if let Some(p) = active_pos && p + 1 < list.len() && s.role.allows(Role::Deployer) {
            form.inline method="post" action=(format!("/modules/{}/rollback", enc(module))) {
                (csrf(s))
                button.danger type="submit" { "Roll back to version " (list[p + 1]["version"]) }
            }
        }
    }
}

fn invoke_form(s: &Session, name: &str, payload: &str, answer: Option<Markup>) -> Markup {
    html! {
        div id="invoke" {
            form.stack method="post" action=(format!("/services/{}/invoke", enc(name)))
                hx-post=(format!("/services/{}/invoke", enc(name))) hx-target="#invoke" hx-swap="outerHTML" {
                (csrf(s))
                div {
                    label for="payload" { "Request (JSON)" }
                    textarea.code id="payload" name="payload" rows="6" { (payload) }
                }
                div { button type="submit" { "Invoke" } }
            }
            @if let Some(a) = answer { (a) }
        }
    }
}

/// POST /services/{name}/invoke: the answer in place (htmx) or on the service's page.
pub async fn invoke(app: &Arc<App>, r: &Req, s: &Arc<Session>, name: &str) -> Resp {
    if let Some(resp) = need(s, Role::Deployer) {
        return resp;
    }
    let f = r.form();
    let payload = field(&f, "payload").to_owned();
    let answer = if !payload.trim().is_empty()
        && serde_json::from_str::<serde::de::IgnoredAny>(&payload).is_err()
    {
        html! { div.flash.error role="alert" id="invoke-answer" { "The request is not JSON." } }
    } else {
        match api(app, s)
            .raw(
                "POST",
                &format!("/v1/invoke/{}", enc(name)),
                Bytes::from(payload.clone()),
                "application/json",
            )
            .await
        {
            Ok((status, body, headers)) => {
                let cid = headers
                    .get("x-oxbus-cid")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                let text = match serde_json::from_slice::<Value>(&body) {
                    Ok(v) => super::pretty(&v),
                    Err(_) => String::from_utf8_lossy(&body).into_owned(),
                };
                html! {
                    div id="invoke-answer" role="status" {
                        p { "Answer: status " strong { (status) } @if !cid.is_empty() { " · cid " code { (cid) } } }
                        pre { code { (text) } }
                    }
                }
            }
            Err(e) => {
                html! { div.flash.error role="alert" id="invoke-answer" { (e.to_string()) } }
            }
        }
    };
    let markup = invoke_form(s, name, &payload, Some(answer));
    if r.is_htmx() {
        crate::http::html(StatusCode::OK, markup)
    } else {
        ok_page(s, "/services", &format!("Invoke {name}"), markup)
    }
}

/// POST /modules/{name}/rollback
pub async fn rollback(app: &Arc<App>, r: &Req, s: &Arc<Session>, module: &str) -> Resp {
    if let Some(resp) = need(s, Role::Deployer) {
        return resp;
    }
    let _ = r;
    let result = api(app, s)
        .send(
            "POST",
            &format!("/v1/modules/{}/rollback", enc(module)),
            &Value::Null,
        )
        .await;
    let to = "/services".to_string();
    match result {
        Ok(v) => back(
            s,
            &to,
            Ok(format!(
                "Module {module} rolled back to version {} (config version {}).",
                v["module"]["version"], v["config_version"]
            )),
        ),
        Err(e) => back(s, &to, Err(format!("Rollback of {module} refused: {e}"))),
    }
}

/// GET /modules/{name}/diff?version=V: version V against the one before it.
pub async fn diff(app: &Arc<App>, r: &Req, s: &Arc<Session>, module: &str) -> Resp {
    let title = format!("Module {module}: changes");
    let a = api(app, s);
    let m = enc(module);
    let hist = match a.get(&format!("/v1/modules/{m}/versions")).await {
        Ok(h) => h,
        Err(e) => return super::failed(s, "/services", &title, &e),
    };
    let list = hist["versions"].as_array().cloned().unwrap_or_default();
    let v: i64 = r
        .q("version")
        .and_then(|v| v.parse().ok())
        .or_else(|| list.first().and_then(|x| x["version"].as_i64()))
        .unwrap_or(0);
    let Some(pos) = list.iter().position(|x| x["version"].as_i64() == Some(v)) else {
        return super::failed(
            s,
            "/services",
            &title,
            &crate::api::ApiError {
                status: Some(404),
                message: format!("module {module} has no version {v}"),
                doc: None,
            },
        );
    };
    let prev = list.get(pos + 1).and_then(|x| x["version"].as_i64());
    let new = a.get(&format!("/v1/modules/{m}/versions/{v}")).await;
    let old = match prev {
        Some(p) => a.get(&format!("/v1/modules/{m}/versions/{p}")).await.ok(),
        None => None,
    };
    let new = match new {
        Ok(n) => n,
        Err(e) => return super::failed(s, "/services", &title, &e),
    };
    let old_src = old
        .as_ref()
        .and_then(|o| o["source"].as_str())
        .unwrap_or("");
    let (a, b) = (
        old_src.to_owned(),
        new["source"].as_str().unwrap_or("").to_owned(),
    );
    // Off the async threads: a long module's diff must not hold up other pages.
    let lines: Vec<(char, String)> = tokio::task::spawn_blocking(move || {
        line_diff(&a, &b)
            .into_iter()
            .map(|(k, l)| (k, l.to_owned()))
            .collect()
    })
    .await
    .unwrap_or_default();
    let body = html! {
        p { "Version " (v) @if let Some(p) = prev { " against version " (p) } @else { " (the first version)" } "." }
        pre {
            code {
                @for (kind, line) in &lines {
                    @match kind {
                        '+' => span.diff-add { "+ " (line) },
                        '-' => span.diff-del { "- " (line) },
                        _ => span.diff-same { "  " (line) },
                    }
                }
            }
        }
    };
    ok_page(s, "/services", &title, body)
}

/// A line diff (longest common subsequence; modules are small): ('+'|'-'|' ', line).
pub fn line_diff<'a>(old: &'a str, new: &'a str) -> Vec<(char, &'a str)> {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    if a.len().saturating_mul(b.len()) > 1_000_000 {
        // Too large to compare line by line here: everything old out, everything new in.
        return a
            .iter()
            .map(|l| ('-', *l))
            .chain(b.iter().map(|l| ('+', *l)))
            .collect();
    }
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() && j < b.len() {
        if a[i] == b[j] {
            out.push((' ', a[i]));
            i += 1;
            j += 1;
        } else if lcs[i + 1][j] >= lcs[i][j + 1] {
            out.push(('-', a[i]));
            i += 1;
        } else {
            out.push(('+', b[j]));
            j += 1;
        }
    }
    out.extend(a[i..].iter().map(|l| ('-', *l)));
    out.extend(b[j..].iter().map(|l| ('+', *l)));
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_line_diff_keeps_common_lines() {
        let d = super::line_diff("a\nb\nc\n", "a\nx\nc\n");
        assert_eq!(d, vec![(' ', "a"), ('-', "b"), ('+', "x"), (' ', "c")]);
    }
}
