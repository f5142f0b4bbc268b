//! The audit log: every change, newest first, filtered by identity (`who`: a dashboard
//! user's changes are under `dashboard.<user>`), object and age, a page at a time.

use maud::html;
use std::sync::Arc;

use super::{Flash, api, flash, ok_page, pretty, when};
use crate::App;
use crate::api::enc;
use crate::http::{Req, Resp};
use crate::session::Session;

/// GET /audit?who=&object=&since=&before=
pub async fn page(app: &Arc<App>, r: &Req, s: &Arc<Session>) -> Resp {
    let mut q = vec!["limit=50".to_owned()];
    let mut keep = Vec::new();
    for k in ["who", "object", "since"] {
        if let Some(v) = r.q(k).map(str::trim).filter(|v| !v.is_empty()) {
            q.push(format!("{k}={}", enc(v)));
            keep.push(format!("{k}={}", enc(v)));
        }
    }
    if let Some(b) = r.q("before") {
        q.push(format!("before={}", enc(b)));
    }
    let result = api(app, s).get(&format!("/v1/audit?{}", q.join("&"))).await;
    let body = html! {
        (flash(&Flash::take(s)))
        form.toolbar method="get" action="/audit" role="search" {
            div { label for="who" { "Who" } input type="text" id="who" name="who" value=(r.q("who").unwrap_or("")) placeholder="root, dashboard.alice"; }
            div { label for="object" { "Object" } input type="text" id="object" name="object" value=(r.q("object").unwrap_or("")) placeholder="channel/%2Fecho"; }
            div { label for="since" { "Since" } input type="text" id="since" name="since" value=(r.q("since").unwrap_or("")) placeholder="1h, 7d"; }
            button type="submit" { "Filter" }
        }
        @match &result {
            Err(e) => div.flash.error role="alert" { (e.to_string()) },
            Ok(v) => {
                table id="audit" {
                    thead { tr {
                        th scope="col" { "When (UTC)" } th scope="col" { "Who" } th scope="col" { "Action" }
                        th scope="col" { "Object" } th scope="col" { "Server" } th scope="col" { "Detail" }
                    } }
                    tbody {
                        @for e in v["entries"].as_array().cloned().unwrap_or_default() {
                            tr {
                                td { (when(e["at_ms"].as_i64().unwrap_or(0))) }
                                td { (e["who"].as_str().unwrap_or("")) }
                                td { (e["action"].as_str().unwrap_or("")) }
                                td { code { (e["object"].as_str().unwrap_or("")) } }
                                td { (e["server"].as_str().unwrap_or("")) }
                                td {
                                    @if !e["detail"].is_null() || !e["after"].is_null() {
                                        details { summary { "detail" }
                                            pre { code { (pretty(&serde_json::json!({"detail": e["detail"], "before": e["before"], "after": e["after"], "cid": e["cid"]}))) } } }
                                    }
                                }
                            }
                        }
                    }
                }
                @if v["entries"].as_array().is_none_or(Vec::is_empty) { p { "No entry matches." } }
                @if let Some(b) = v["next_before"].as_i64().map(|b| b.to_string()).or_else(|| v["next_before"].as_str().map(str::to_owned)) {
                    a href=(format!("/audit?{}{}before={}", keep.join("&"), if keep.is_empty() { "" } else { "&" }, enc(&b))) { "Older entries" }
                }
            },
        }
    };
    ok_page(s, "/audit", "Audit log", body)
}
