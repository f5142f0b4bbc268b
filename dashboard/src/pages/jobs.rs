//! The scheduler: which server leads, every job with its next run; a job's definition and
//! run history; run now (deployer), enable and disable (admin).

use maud::html;
use serde_json::Value;
use std::sync::Arc;

use super::{Flash, api, back, csrf, flash, ok_page, pretty, when};
use crate::App;
use crate::api::enc;
use crate::http::{Req, Resp, need};
use crate::session::Session;
use crate::users::Role;

/// GET /jobs
pub async fn list(app: &Arc<App>, _r: &Req, s: &Arc<Session>) -> Resp {
    let a = api(app, s);
    let (jobs, sched) = tokio::join!(a.get("/v1/jobs"), a.get("/v1/scheduler"));
    let jobs = match jobs {
        Ok(v) => v,
        Err(e) => return super::failed(s, "/jobs", "Scheduler", &e),
    };
    let body = html! {
        (flash(&Flash::take(s)))
        @if let Ok(sc) = &sched {
            p { "Leading scheduler: " strong { (sc["leader"].as_str().unwrap_or("none")) } " · " (sc["jobs"]) " jobs" }
        }
        table {
            thead { tr {
                th scope="col" { "Job" } th scope="col" { "Service" } th scope="col" { "Type" }
                th scope="col" { "Active" } th scope="col" { "Next run (UTC)" }
                @if s.role.allows(Role::Deployer) { th scope="col" { span.visually-hidden { "Actions" } } }
            } }
            tbody {
                @for j in jobs["jobs"].as_array().cloned().unwrap_or_default() {
                    @let name = j["name"].as_str().unwrap_or("?").to_owned();
                    tr {
                        td { a href=(format!("/jobs/{}", enc(&name))) { (name) } }
                        td { (j["service"].as_str().unwrap_or("")) }
                        td { (j["type"].as_str().unwrap_or("")) }
                        td { @if j["active"] == true { "yes" } @else { "no" } }
                        td { @match sched.as_ref().ok().and_then(|sc| sc["next_runs"][&name].as_i64()) { Some(t) => (when(t)), None => span.muted { "–" } } }
                        @if s.role.allows(Role::Deployer) {
                            td { (actions(s, &name, j["active"] == true)) }
                        }
                    }
                }
            }
        }
    };
    ok_page(s, "/jobs", "Scheduler", body)
}

fn actions(s: &Session, name: &str, active: bool) -> maud::Markup {
    let base = format!("/jobs/{}", enc(name));
    html! {
        form.inline method="post" action=(format!("{base}/execute")) {
            (csrf(s))
            button type="submit" aria-label=(format!("Run now: {name}")) { "Run now" }
        }
        @if s.role.allows(Role::Admin) {
            " "
            form.inline method="post" action=(format!("{base}/{}", if active { "disable" } else { "enable" })) {
                (csrf(s))
                button.secondary type="submit" aria-label=(format!("{}: {name}", if active { "Disable" } else { "Enable" })) {
                    @if active { "Disable" } @else { "Enable" }
                }
            }
        }
    }
}

/// GET /jobs/{name}
pub async fn detail(app: &Arc<App>, _r: &Req, s: &Arc<Session>, name: &str) -> Resp {
    let title = format!("Job {name}");
    let a = api(app, s);
    let base = format!("/v1/jobs/{}", enc(name));
    let runs_path = format!("{base}/runs?limit=50");
    let (job, runs) = tokio::join!(a.get(&base), a.get(&runs_path));
    let job = match job {
        Ok(v) => v,
        Err(e) => return super::failed(s, "/jobs", &title, &e),
    };
    let body = html! {
        (flash(&Flash::take(s)))
        @if s.role.allows(Role::Deployer) { p { (actions(s, name, job["active"] == true)) } }
        h2 { "Definition" }
        pre { code { (pretty(&job)) } }
        h2 { "Runs" }
        @match runs {
            Ok(v) => {
                table id="runs" {
                    thead { tr {
                        th scope="col" { "Started (UTC)" } th scope="col" { "Trigger" } th scope="col" { "Server" }
                        th scope="col" { "Outcome" } th.num scope="col" { "Duration" } th scope="col" { "Error" }
                    } }
                    tbody {
                        @for run in v["runs"].as_array().cloned().unwrap_or_default() {
                            tr {
                                td { (when(run["started"].as_i64().unwrap_or(0))) }
                                td { (run["trigger"].as_str().unwrap_or("")) }
                                td { (run["server"].as_str().unwrap_or("")) }
                                td class=(if run["outcome"] == "ok" { "state-ok" } else { "state-bad" }) { (run["outcome"].as_str().unwrap_or("")) }
                                td.num { (run["duration_ms"]) " ms" }
                                td { (run["error"].as_str().unwrap_or("")) }
                            }
                        }
                    }
                }
            },
            Err(e) => div.flash.error role="alert" { (e.to_string()) },
        }
    };
    ok_page(s, "/jobs", &title, body)
}

/// POST /jobs/{name}/{execute|enable|disable}
pub async fn action(app: &Arc<App>, r: &Req, s: &Arc<Session>, name: &str, action: &str) -> Resp {
    let needed = match action {
        "execute" => Role::Deployer,
        "enable" | "disable" => Role::Admin,
        _ => {
            return crate::http::text(hyper::StatusCode::NOT_FOUND, "no such action");
        }
    };
    if let Some(resp) = need(s, needed) {
        return resp;
    }
    let to = r
        .headers
        .get(hyper::header::REFERER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.contains(&format!("/jobs/{}", enc(name))))
        .map(|_| format!("/jobs/{}", enc(name)))
        .unwrap_or_else(|| "/jobs".into());
    match api(app, s)
        .send(
            "POST",
            &format!("/v1/jobs/{}/{action}", enc(name)),
            &Value::Null,
        )
        .await
    {
        Ok(v) => {
            let msg = match action {
                "execute" => format!(
                    "Ran {name}: {} in {} ms{}.",
                    v["run"]["outcome"].as_str().unwrap_or("?"),
                    v["run"]["duration_ms"],
                    v["run"]["error"]
                        .as_str()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                ),
                "enable" => format!("Enabled {name}."),
                _ => format!("Disabled {name}."),
            };
            back(s, &to, Ok(msg))
        }
        Err(e) => back(s, &to, Err(format!("{action} {name} refused: {e}"))),
    }
}
