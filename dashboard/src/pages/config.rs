//! Config export and import. The export (deployer: it carries sealed secret values and
//! credential hashes) downloads as JSON or YAML. An import (admin) is uploaded, sent to the
//! servers as a dry run first, and shown as its plan — every object it creates, updates or
//! deletes, an update with a line diff of the object before and after — with a button to
//! apply exactly that document; the servers validate it again in full when it is applied.

use bytes::Bytes;
use hyper::StatusCode;
use hyper::header::{self, HeaderValue};
use maud::{Markup, html};
use serde_json::Value;
use std::sync::Arc;

use super::services::line_diff;
use super::{Flash, api, back, csrf, flash, ok_page, pretty};
use crate::App;
use crate::http::{Req, Resp, multipart, need};
use crate::session::Session;
use crate::users::Role;

/// GET /config
pub async fn page(_app: &Arc<App>, _r: &Req, s: &Arc<Session>) -> Resp {
    let body = html! {
        (flash(&Flash::take(s)))
        h2 { "Export" }
        @if s.role.allows(Role::Deployer) {
            p { "Every stored object, one list per kind (Zato's enmasse shape): channels, security definitions, secrets (sealed), modules, caches, jobs, connections, pub/sub." }
            p {
                a.button href="/config/export?format=yaml" { "Download YAML" } " "
                a.button href="/config/export?format=json" { "Download JSON" }
            }
        } @else {
            p.muted { "The export carries sealed secrets and credential hashes: it needs the deployer role." }
        }
        h2 { "Import" }
        @if s.role.allows(Role::Admin) {
            (import_form(s))
        } @else {
            p.muted { "Importing needs the admin role." }
        }
    };
    ok_page(s, "/config", "Config export and import", body)
}

fn import_form(s: &Session) -> Markup {
    html! {
        p { "The file is checked by the servers first (a dry run): you see every change before anything is written." }
        form.stack method="post" action="/config/plan" enctype="multipart/form-data" {
            (csrf(s))
            div {
                label for="document" { "Export document (.yaml or .json)" }
                input type="file" id="document" name="document" accept=".yaml,.yml,.json" required;
            }
            div {
                input type="checkbox" id="replace" name="replace" value="1";
                " "
                label for="replace" { "Replace: also delete what the document does not list" }
            }
            div { button type="submit" id="plan-submit" { "Show the changes" } }
        }
    }
}

/// GET /config/export?format=yaml|json: the export as a download.
pub async fn export(app: &Arc<App>, r: &Req, s: &Arc<Session>) -> Resp {
    if let Some(resp) = need(s, Role::Deployer) {
        return resp;
    }
    let doc = match api(app, s).get("/v1/config").await {
        Ok(d) => d,
        Err(e) => return super::failed(s, "/config", "Config export", &e),
    };
    let yaml = r.q("format") != Some("json");
    let (text, ct, ext) = if yaml {
        match serde_yaml_ng::to_string(&doc) {
            Ok(t) => (t, "application/yaml", "yaml"),
            Err(e) => {
                return crate::http::text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot write the export as YAML: {e}"),
                );
            }
        }
    } else {
        (pretty(&doc), "application/json", "json")
    };
    let mut resp = crate::http::text(StatusCode::OK, text);
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    let v = format!(
        "attachment; filename=\"oxbus-config-{}.{ext}\"",
        doc["config_version"]
    );
    if let Ok(v) = HeaderValue::from_str(&v) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    resp
}

/// The document of an uploaded file: YAML (JSON is YAML too) as the API's JSON.
pub fn parse_document(text: &str) -> Result<Value, String> {
    let v: Value = serde_yaml_ng::from_str(text).map_err(|e| format!("not YAML or JSON: {e}"))?;
    if !v.is_object() {
        return Err("not an export document (expected a mapping of kinds to lists)".into());
    }
    Ok(v)
}

/// The document's list a change's kind lives in (the inbound channels are `channel_*`
/// there).
fn doc_key(kind: &str) -> String {
    match kind.strip_prefix("inbound_") {
        Some(t) => format!("channel_{t}"),
        None => kind.to_owned(),
    }
}

/// The object `name` of `kind` in a document: by its `name`, a subscription by `sub_key`, a
/// channel without a name by its `url_path` (as the import keys it).
fn object<'a>(doc: &'a Value, kind: &str, name: &str) -> Option<&'a Value> {
    doc[doc_key(kind)].as_array()?.iter().find(|o| {
        o["name"].as_str() == Some(name)
            || o["sub_key"].as_str() == Some(name)
            || (o["name"].is_null() && o["url_path"].as_str() == Some(name))
    })
}

/// Members whose values are secret material, at any depth.
const SECRET_KEYS: &[&str] = &[
    "value",
    "password",
    "key",
    "secret",
    "client_secret",
    "token",
    "sealed",
    "password_hash",
];

/// `v` with every secret value replaced: `‹secret›`, or on the new side (`was`: the stored
/// object) `‹secret, changed›` where it differs from the stored one, so the diff says a
/// secret changed without showing it.
pub fn redact(v: &Value, was: Option<&Value>) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| {
                    let old = was.and_then(|w| w.get(k));
                    let out = if SECRET_KEYS.contains(&k.as_str()) && !x.is_null() {
                        let changed = was.is_some() && old != Some(x);
                        Value::String(
                            if changed {
                                "‹secret, changed›"
                            } else {
                                "‹secret›"
                            }
                            .into(),
                        )
                    } else {
                        redact(x, old)
                    };
                    (k.clone(), out)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(
            a.iter()
                .enumerate()
                .map(|(i, x)| redact(x, was.and_then(|w| w.get(i))))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The text a change's diff compares: a module's source as it is, anything else as indented
/// JSON with its secrets redacted.
fn shown(kind: &str, obj: Option<&Value>, was: Option<&Value>) -> String {
    match obj {
        None => String::new(),
        Some(o) if kind == "service_module" => o["source"].as_str().unwrap_or("").to_owned(),
        Some(o) => pretty(&redact(o, was)),
    }
}

/// One change's diff lines; `None` past the budget.
type Diff = Option<Vec<(char, String)>>;

/// Every change's line diff, computed off the async threads within one budget of compared
/// lines (past it a change is listed without its diff).
async fn diffs(changes: Vec<Value>, current: Value, doc: Value) -> Vec<Diff> {
    tokio::task::spawn_blocking(move || {
        let mut budget: usize = 4_000_000;
        changes
            .iter()
            .map(|c| {
                let kind = c["kind"].as_str().unwrap_or("");
                let name = c["name"].as_str().unwrap_or("");
                let before_obj = object(&current, kind, name);
                // The stored side redacted against nothing (every secret `‹secret›`).
                let before = shown(kind, before_obj, None);
                let after = shown(
                    kind,
                    object(&doc, kind, name),
                    Some(before_obj.unwrap_or(&Value::Null)),
                );
                let cells = before.lines().count().max(1) * after.lines().count().max(1);
                if cells > budget {
                    return None;
                }
                budget -= cells;
                Some(
                    line_diff(&before, &after)
                        .into_iter()
                        .map(|(k, l)| (k, l.to_owned()))
                        .collect(),
                )
            })
            .collect()
    })
    .await
    .unwrap_or_default()
}

/// The dry run's changes as comparable text (what apply checks has not changed).
fn plan_key(changes: &[Value]) -> String {
    let mut v: Vec<String> = changes
        .iter()
        .map(|c| format!("{} {} {}", c["action"], c["kind"], c["name"]))
        .collect();
    v.sort();
    v.join("\n")
}

/// POST /config/plan (multipart: document, replace): the dry run's plan, with diffs.
pub async fn plan(app: &Arc<App>, r: &Req, s: &Arc<Session>) -> Resp {
    if let Some(resp) = need(s, Role::Admin) {
        return resp;
    }
    let parts = match multipart(r).await {
        Ok(p) => p,
        Err(e) => {
            return back(
                s,
                "/config",
                Err(format!("The upload could not be read: {e}")),
            );
        }
    };
    let replace = parts
        .iter()
        .any(|p| p.name == "replace" && &p.data[..] == b"1");
    let Some(file) = parts.iter().find(|p| p.name == "document") else {
        return back(s, "/config", Err("Choose a file to import.".into()));
    };
    let Ok(text) = std::str::from_utf8(&file.data) else {
        return back(s, "/config", Err("The file is not UTF-8 text.".into()));
    };
    let doc = match parse_document(text) {
        Ok(d) => d,
        Err(e) => return back(s, "/config", Err(e)),
    };
    let a = api(app, s);
    let q = if replace {
        "?dry_run=1&replace=1"
    } else {
        "?dry_run=1"
    };
    let body = Bytes::from(doc.to_string());
    let path = format!("/v1/config{q}");
    let (report, current) = tokio::join!(
        a.call("POST", &path, body, "application/json"),
        a.get("/v1/config")
    );
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            return back(
                s,
                "/config",
                Err(format!("The servers refused the document: {e}")),
            );
        }
    };
    let current = current.unwrap_or(Value::Null);
    let changes = report["changes"].as_array().cloned().unwrap_or_default();
    let id = s.set_pending(doc.to_string().into(), replace, plan_key(&changes));
    let diffs = diffs(changes.clone(), current, doc).await;
    let markup = html! {
        @if changes.is_empty() {
            div.flash.ok role="status" id="plan" { "Nothing to change: every object equals the stored one (" (report["unchanged"]) " unchanged)." }
        } @else {
            p id="plan" { (changes.len()) " changes, " (report["unchanged"]) " objects unchanged"
                @if replace { " (replace: what the document does not list is deleted)" } "." }
            table {
                thead { tr { th scope="col" { "Action" } th scope="col" { "Kind" } th scope="col" { "Name" } } }
                tbody {
                    @for c in &changes {
                        tr { td { strong { (c["action"].as_str().unwrap_or("")) } } td { (c["kind"].as_str().unwrap_or("")) } td { code { (c["name"].as_str().unwrap_or("")) } } }
                    }
                }
            }
            @for (c, diff) in changes.iter().zip(diffs.iter().chain(std::iter::repeat(&None))) {
                @let (kind, name) = (c["kind"].as_str().unwrap_or(""), c["name"].as_str().unwrap_or(""));
                h2 { (c["action"].as_str().unwrap_or("")) " " (kind) " " code { (name) } }
                @match diff {
                    Some(lines) => pre {
                        code {
                            @for (k, line) in lines {
                                @match k {
                                    '+' => span.diff-add { "+ " (line) },
                                    '-' => span.diff-del { "- " (line) },
                                    _ => span.diff-same { "  " (line) },
                                }
                            }
                        }
                    },
                    None => p.muted { "Too large to show as a diff here." },
                }
            }
            form method="post" action="/config/apply" {
                (csrf(s))
                input type="hidden" name="pending" value=(id);
                button.danger type="submit" id="apply-submit" { "Apply these changes" }
            }
        }
        p { a href="/config" { "Back to export and import" } }
    };
    ok_page(s, "/config", "Import: the changes", markup)
}

/// POST /config/apply: the document the plan showed, imported.
pub async fn apply(app: &Arc<App>, r: &Req, s: &Arc<Session>) -> Resp {
    if let Some(resp) = need(s, Role::Admin) {
        return resp;
    }
    let form = r.form();
    let Some((doc, replace, shown_plan)) = s.take_pending(crate::http::field(&form, "pending"))
    else {
        return back(
            s,
            "/config",
            Err("That plan is no longer pending (applied, replaced by another, expired, or signed out): upload the file again.".into()),
        );
    };
    // The stored config may have changed since the plan was shown: the plan is made again
    // and applied only if it is the one the user saw.
    let a = api(app, s);
    let dry = if replace {
        "?dry_run=1&replace=1"
    } else {
        "?dry_run=1"
    };
    match a
        .call(
            "POST",
            &format!("/v1/config{dry}"),
            doc.clone(),
            "application/json",
        )
        .await
    {
        Ok(r) if plan_key(r["changes"].as_array().map_or(&[][..], Vec::as_slice)) == shown_plan => {
        }
        Ok(_) => {
            return back(
                s,
                "/config",
                Err("The stored config changed since the plan was shown: nothing was applied; upload the file again to see the new plan.".into()),
            );
        }
        Err(e) => return back(s, "/config", Err(format!("The import was refused: {e}"))),
    }
    let q = if replace { "?replace=1" } else { "" };
    match a
        .call("POST", &format!("/v1/config{q}"), doc, "application/json")
        .await
    {
        Ok(rep) => back(
            s,
            "/config",
            Ok(format!(
                "Imported: {} changes, config version {}.",
                rep["changes"].as_array().map_or(0, Vec::len),
                rep["config_version"]
            )),
        ),
        Err(e) => back(s, "/config", Err(format!("The import was refused: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn yaml_and_json_documents_parse_to_the_same() {
        let y = super::parse_document("channel_rest:\n  - name: /a\n    service: x\n").unwrap();
        let j =
            super::parse_document(r#"{"channel_rest": [{"name": "/a", "service": "x"}]}"#).unwrap();
        assert_eq!(y, j);
        assert!(super::parse_document("- a\n- b\n").is_err());
        assert_eq!(
            super::object(&y, "channel_rest", "/a").unwrap()["service"],
            "x"
        );
        let nameless = serde_json::json!({"channel_amqp": [{"url_path": "/q", "x": 1}]});
        assert_eq!(
            super::object(&nameless, "inbound_amqp", "/q").unwrap()["x"],
            1
        );
    }

    #[test]
    fn secrets_are_redacted_and_a_change_is_said() {
        use serde_json::json;
        let stored =
            json!({"name": "crm", "sealed": "oxbus1:aa:bb:cc", "auth": {"password": "p1"}});
        let new = json!({"name": "crm", "value": "hunter2", "auth": {"password": "p1"}});
        let shown = super::pretty(&super::redact(&new, Some(&stored)));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("‹secret, changed›"), "{shown}");
        let b = super::pretty(&super::redact(&stored, None));
        assert!(!b.contains("oxbus1:") && !b.contains("p1"), "{b}");
        // An unchanged password reads the same on both sides.
        assert_eq!(
            super::redact(&new, Some(&stored))["auth"]["password"],
            super::redact(&stored, None)["auth"]["password"]
        );
    }
}
