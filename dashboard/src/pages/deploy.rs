//! Deploy: upload one or more Python modules (each under its file name, `crm.py` → module
//! `crm`); the servers check them in a worker, store them and activate them everywhere, all
//! or nothing. The page shows the report: per worker and per peer server, or the refusal
//! with its traceback.

use maud::html;
use serde_json::{Value, json};
use std::sync::Arc;

use super::{Flash, api, csrf, flash, ok_page, pretty};
use crate::App;
use crate::http::{Req, Resp, multipart, need};
use crate::session::Session;
use crate::users::Role;

fn form_markup(s: &Session) -> maud::Markup {
    html! {
        @if s.role.allows(Role::Deployer) {
            form.stack method="post" action="/deploy" enctype="multipart/form-data" {
                (csrf(s))
                div {
                    label for="modules" { "Python modules (.py)" }
                    input type="file" id="modules" name="modules" accept=".py,text/x-python" multiple required;
                }
                div { button type="submit" id="deploy-submit" { "Deploy" } }
            }
        } @else {
            p { "Deploying needs the deployer role; you are signed in as " (s.role.as_str()) "." }
        }
    }
}

/// GET /deploy
pub fn form(_app: &Arc<App>, _r: &Req, s: &Arc<Session>) -> Resp {
    let body = html! {
        (flash(&Flash::take(s)))
        p { "Each file is deployed as the module of its name. The servers import it in one worker first: a module that does not import changes nothing, and the traceback is shown here." }
        (form_markup(s))
    };
    ok_page(s, "/deploy", "Deploy", body)
}

/// A module name from an uploaded file name: the base name without `.py`.
fn module_name(file: &str) -> Result<String, String> {
    let base = file.rsplit(['/', '\\']).next().unwrap_or(file);
    let Some(stem) = base.strip_suffix(".py") else {
        return Err(format!("{base:.80?} is not a .py file"));
    };
    if stem.is_empty() {
        return Err("a file named .py has no module name".into());
    }
    Ok(stem.to_owned())
}

/// POST /deploy (multipart)
pub async fn submit(app: &Arc<App>, r: &Req, s: &Arc<Session>) -> Resp {
    if let Some(resp) = need(s, Role::Deployer) {
        return resp;
    }
    let render = |outcome: maud::Markup| {
        ok_page(s, "/deploy", "Deploy", html! { (outcome) (form_markup(s)) })
    };
    let parts = match multipart(r).await {
        Ok(p) => p,
        Err(e) => {
            return render(
                html! { div.flash.error role="alert" { "The upload could not be read: " (e) } },
            );
        }
    };
    let mut modules = Vec::new();
    for p in parts.iter().filter(|p| p.name == "modules") {
        let Some(file) = p.file_name.as_deref().filter(|f| !f.is_empty()) else {
            continue;
        };
        let name = match module_name(file) {
            Ok(n) => n,
            Err(e) => return render(html! { div.flash.error role="alert" { (e) } }),
        };
        let Ok(source) = std::str::from_utf8(&p.data) else {
            return render(html! { div.flash.error role="alert" { (file) " is not UTF-8 text" } });
        };
        modules.push(json!({"name": name, "source": source}));
    }
    if modules.is_empty() {
        return render(html! { div.flash.error role="alert" { "Choose at least one .py file." } });
    }
    let names: Vec<String> = modules
        .iter()
        .filter_map(|m| m["name"].as_str().map(str::to_owned))
        .collect();
    let outcome = match api(app, s)
        .send("POST", "/v1/modules", &json!({ "modules": modules }))
        .await
    {
        Ok(report) => html! {
            div.flash.ok role="status" id="deploy-result" {
                @if report["modules"].as_array().is_some_and(Vec::is_empty) {
                    "Nothing deployed: " (names.join(", ")) " equal the active versions (config version " (report["config_version"]) ")."
                } @else {
                    "Deployed " (names.join(", ")) " (config version " (report["config_version"]) ")."
                }
            }
            (modules_list(&report))
            @let warnings = report["warnings"].as_array().cloned().unwrap_or_default();
            @if !warnings.is_empty() {
                div.flash.warning role="alert" id="deploy-warnings" {
                    p { "Deployed, but look at these:" }
                    ul { @for w in &warnings { li { (w["message"].as_str().unwrap_or("")) } } }
                }
            }
            (per_server(&report))
            details { summary { "The servers' whole report" } pre { code { (pretty(&report)) } } }
        },
        Err(e) => {
            let tb = e
                .doc
                .as_ref()
                .and_then(|d| d.get("traceback").or_else(|| d.pointer("/error/traceback")))
                .and_then(Value::as_str)
                .map(str::to_owned);
            html! {
                div.flash.error role="alert" id="deploy-result" {
                    "Not deployed: " (e.to_string())
                }
                @if let Some(tb) = tb { pre { code { (tb) } } }
                @else if let Some(d) = e.doc.as_ref().filter(|d| has_more_than_error(d)) {
                    pre { code { (pretty(d)) } }
                }
            }
        }
    };
    render(outcome)
}

/// Whether an error document says more than its `error` (and `module`), which the flash
/// already shows: a duplicate service name is one sentence, shown once.
fn has_more_than_error(doc: &Value) -> bool {
    doc.as_object()
        .is_some_and(|o| o.keys().any(|k| k != "error" && k != "module"))
}

/// Each module the deploy stored (version, services) and each it left unchanged.
fn modules_list(report: &Value) -> maud::Markup {
    let services = |m: &Value| {
        let names: Vec<&str> = m["services"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if names.is_empty() {
            "no services".to_owned()
        } else {
            names.join(", ")
        }
    };
    html! {
        ul id="deploy-modules" {
            @for m in report["modules"].as_array().into_iter().flatten() {
                li { (m["name"].as_str().unwrap_or("")) " version " (m["version"]) ": " (services(m)) }
            }
            @for m in report["unchanged_modules"].as_array().into_iter().flatten() {
                // Without "services" no worker was ready to say which: nothing about them.
                @if m.get("services").is_some() {
                    li { (m["name"].as_str().unwrap_or("")) " unchanged at version " (m["version"]) " (same source): " (services(m)) }
                } @else {
                    li { (m["name"].as_str().unwrap_or("")) " unchanged at version " (m["version"]) " (same source)" }
                }
            }
        }
    }
}

/// One server's workers' acknowledgements: (acknowledged, workers, slowest ms, errors).
fn acks(workers: &Value) -> (usize, usize, f64, Vec<String>) {
    let list = workers.as_array().cloned().unwrap_or_default();
    let ok = list.iter().filter(|w| w["ok"] == true).count();
    let slowest = list
        .iter()
        .filter_map(|w| w["ms"].as_f64())
        .fold(0.0, f64::max);
    let errors = list
        .iter()
        .filter_map(|w| {
            w["error"]
                .as_str()
                .map(|e| format!("worker {}: {e}", w["worker_id"]))
        })
        .collect();
    (ok, list.len(), slowest, errors)
}

/// The report per server: this one's workers, then each peer's answer.
fn per_server(report: &Value) -> maud::Markup {
    let mut rows: Vec<(String, Option<u16>, Value)> = vec![(
        report["server"]
            .as_str()
            .unwrap_or("this server")
            .to_owned(),
        None,
        report["workers"].clone(),
    )];
    for p in report["servers"].as_array().cloned().unwrap_or_default() {
        let workers = p["body"]["workers"].clone();
        rows.push((
            p["server"].as_str().unwrap_or("?").to_owned(),
            p["status"].as_u64().map(|s| s as u16),
            if workers.is_null() {
                p["body"].clone()
            } else {
                workers
            },
        ));
    }
    html! {
        table id="deploy-servers" {
            caption.visually-hidden { "The deploy on each server" }
            thead { tr {
                th scope="col" { "Server" } th scope="col" { "Answer" }
                th.num scope="col" { "Workers acknowledged" } th.num scope="col" { "Slowest activation" }
                th scope="col" { "Errors" }
            } }
            tbody {
                @for (server, status, workers) in &rows {
                    @let (ok, n, slowest, errors) = acks(workers);
                    @let err = workers.get("error").and_then(Value::as_str);
                    tr {
                        td { (server) }
                        td { @match status { None => "this server", Some(st) => (st) } }
                        td.num class=(if ok == n && err.is_none() { "state-ok" } else { "state-bad" }) { (ok) " / " (n) }
                        td.num { (format!("{slowest:.1} ms")) }
                        td { @if let Some(e) = err { (e) } @for e in &errors { (e) br; } }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_error_document_is_shown_whole_only_when_it_says_more() {
        use serde_json::json;
        assert!(!super::has_more_than_error(
            &json!({"error": "duplicate service name", "module": "m"})
        ));
        assert!(super::has_more_than_error(
            &json!({"error": "import failed", "module": "m", "timeout_ms": 5})
        ));
    }

    #[test]
    fn the_modules_list_names_services_and_unchanged_modules() {
        let report = serde_json::json!({
            "modules": [{"name": "crm", "version": 3, "services": ["crm.get", "crm.put"]}],
            "unchanged_modules": [{"name": "util", "version": 1, "services": []},
                                  {"name": "lib", "version": 2}],
        });
        let html = super::modules_list(&report).into_string();
        assert!(html.contains("crm version 3: crm.get, crm.put"), "{html}");
        assert!(
            html.contains("util unchanged at version 1 (same source): no services"),
            "{html}"
        );
        // No "services": no worker was ready to say; nothing about them.
        assert!(
            html.contains("lib unchanged at version 2 (same source)</li>"),
            "{html}"
        );
    }

    #[test]
    fn module_names_come_from_file_names() {
        assert_eq!(super::module_name("crm.py").unwrap(), "crm");
        assert_eq!(super::module_name("C:\\x\\crm.py").unwrap(), "crm");
        assert!(super::module_name("crm.txt").is_err());
        assert!(super::module_name(".py").is_err());
    }
}
