//! The cluster overview (servers, versions, config version per server, bus links, store
//! health, workers, the last hour's charts; the servers' table live over server-sent
//! events) and the servers-and-workers page (each worker's state, load, RSS; restarts by
//! reason).

use hyper::StatusCode;
use hyper::header::{self, HeaderValue};
use maud::{Markup, html};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

use super::{charts, flash, num, ok_page};
use crate::App;
use crate::api::Api;
use crate::http::{Body, Req, Resp};
use crate::session::Session;

/// How often the live table is sent.
pub const LIVE_EVERY: Duration = Duration::from_secs(2);

/// `/v1/info` of every configured server, in order (an error in place of one that did not answer).
async fn infos(app: &App, s: &Session) -> Vec<(String, Result<Value, String>)> {
    let calls = super::apis(app, s).into_iter().map(|api: Api| async move {
        let r = api.get("/v1/info").await.map_err(|e| e.to_string());
        (api.authority.clone(), r)
    });
    futures_util::future::join_all(calls).await
}

fn servers_rows(infos: &[(String, Result<Value, String>)]) -> Markup {
    html! {
        @for (addr, info) in infos {
            @match info {
                Ok(i) => {
                    @let workers = i["workers"].as_array().cloned().unwrap_or_default();
                    @let ready = workers.iter().filter(|w| w["state"] == "ready").count();
                    tr {
                        td { (i["server"].as_str().unwrap_or("?")) }
                        td { code { (addr) } }
                        td.state-ok { "answering" }
                        td { (i["oxbus"].as_str().unwrap_or("?")) }
                        td.num { (i["config_version"].as_i64().map_or("?".into(), |v| v.to_string())) }
                        td.num { (ready) " / " (workers.len()) }
                        td.num.served { (num(workers.iter().filter_map(|w| w["served"].as_f64()).sum())) }
                        td.num { (num(workers.iter().filter_map(|w| w["inflight"].as_f64()).sum())) }
                        td.num { (uptime(i["uptime_s"].as_u64().unwrap_or(0))) }
                    }
                },
                Err(e) => tr {
                    td { "?" }
                    td { code { (addr) } }
                    td.state-bad colspan="7" { "not answering: " (e) }
                },
            }
        }
    }
}

fn uptime(s: u64) -> String {
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        7200..=172_799 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}

/// GET /
pub async fn page(app: &Arc<App>, _r: &Req, s: &Arc<Session>) -> Resp {
    let infos = infos(app, s).await;
    let cluster = super::api(app, s).get("/v1/cluster").await;
    let body = html! {
        (flash(&super::Flash::take(s)))
        h2 { "Servers" }
        div hx-ext="sse" sse-connect="/live/overview" {
            table {
                caption.visually-hidden { "Servers of the cluster, updated every 2 seconds" }
                thead { tr {
                    th scope="col" { "Server" } th scope="col" { "Admin API" } th scope="col" { "State" }
                    th scope="col" { "Version" } th.num scope="col" { "Config version" }
                    th.num scope="col" { "Workers ready" } th.num scope="col" { "Requests served" }
                    th.num scope="col" { "In flight" } th.num scope="col" { "Up" }
                } }
                tbody id="servers-live" sse-swap="servers" { (servers_rows(&infos)) }
            }
        }
        h2 { "Store and cluster bus" }
        @match &cluster {
            Ok(c) => {
                div.cards {
                    div.card {
                        div.label { "Config store" }
                        div.value { (c["store"]["kind"].as_str().unwrap_or("?")) }
                        @if c["store"]["reachable"] == true {
                            div.state-ok { "reachable · config version " (c["store"]["config_version"]) }
                        } @else {
                            div.state-bad { "unreachable: " (c["store"]["error"].as_str().unwrap_or("")) }
                        }
                    }
                    div.card {
                        div.label { "Cluster bus" }
                        @if c["bus"]["running"] == true {
                            div.value { (c["bus"]["links"].as_array().map_or(0, Vec::len)) " links" }
                        } @else {
                            div.value { "not running" }
                            div.muted { (c["bus"]["why"].as_str().unwrap_or("")) }
                        }
                    }
                    div.card {
                        div.label { "Servers in the store" }
                        div.value { (c["servers"].as_array().map_or(0, Vec::len)) }
                    }
                }
                @if let Some(links) = c["bus"]["links"].as_array() && !links.is_empty() {
                    table {
                        thead { tr { th scope="col" { "Bus link" } th scope="col" { "State" } } }
                        tbody {
                            @for l in links {
                                tr { td { (l["peer"].as_str().or(l["name"].as_str()).unwrap_or("?")) } td { code { (l) } } }
                            }
                        }
                    }
                }
            },
            Err(e) => div.flash.error role="alert" { "The cluster's state did not come: " (e.to_string()) },
        }
        h2 { "Last hour" }
        (charts::overview(&app.sampler.series()))
    };
    ok_page(s, "/", "Cluster overview", body)
}

/// GET /live/overview: the servers' rows every [`LIVE_EVERY`] as the `servers` event, until
/// the browser goes away or the session ends (the stream does not keep a session alive).
pub fn live(app: &Arc<App>, s: &Arc<Session>) -> Resp {
    use std::sync::atomic::Ordering;
    if s.streams.fetch_add(1, Ordering::SeqCst) >= crate::session::MAX_STREAMS {
        s.streams.fetch_sub(1, Ordering::SeqCst);
        return crate::http::text(
            StatusCode::TOO_MANY_REQUESTS,
            "too many live pages open in this session",
        );
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(4);
    let (app, s) = (app.clone(), s.clone());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(LIVE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !app.sessions.is_live(&s) {
                break;
            }
            let rows = servers_rows(&infos(&app, &s).await).into_string();
            // A browser that stops reading (but keeps the connection) ends the stream.
            if tx
                .send_timeout(sse_event("servers", &rows), LIVE_EVERY * 5)
                .await
                .is_err()
            {
                break;
            }
        }
        s.streams.fetch_sub(1, Ordering::SeqCst);
    });
    let mut r = hyper::Response::new(Body::Stream(rx));
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// One server-sent event: each line of `data` (split at CR, LF or CRLF, as the event stream
/// reads them) its own `data:` field.
pub fn sse_event(event: &str, data: &str) -> bytes::Bytes {
    let mut ev = format!("event: {event}\n");
    for line in data.split("\r\n").flat_map(|l| l.split(['\r', '\n'])) {
        ev.push_str("data: ");
        ev.push_str(line);
        ev.push('\n');
    }
    ev.push('\n');
    bytes::Bytes::from(ev)
}

/// POST /servers/restart (admin; `server`: one of the configured admin addresses).
pub async fn restart(app: &Arc<App>, r: &Req, s: &Arc<Session>) -> Resp {
    if let Some(resp) = crate::http::need(s, crate::users::Role::Admin) {
        return resp;
    }
    let form = r.form();
    let server = crate::http::field(&form, "server");
    if !app.settings.servers.iter().any(|a| a == server) {
        return super::back(
            s,
            "/servers",
            Err(format!("{server:?} is not one of the dashboard's servers")),
        );
    }
    let api = super::user_api(server, s);
    match api.send("POST", "/v1/workers/restart", &Value::Null).await {
        Ok(v) => super::back(
            s,
            "/servers",
            Ok(format!(
                "Rolling restart of the workers of {server} started (from generation {}).",
                v["from_generation"]
            )),
        ),
        Err(e) => super::back(
            s,
            "/servers",
            Err(format!("Restart of {server} refused: {e}")),
        ),
    }
}

/// Per worker slot of one server's /metrics: resident memory; and restarts by reason.
/// (label value, figure) pairs of one metric.
type Figures = Vec<(String, f64)>;

fn worker_figures(text: &str) -> (Figures, Figures) {
    let mut rss = Vec::new();
    let mut restarts = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((head, v)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = v.parse::<f64>() else { continue };
        let label = |key: &str| {
            head.split_once('{').and_then(|(_, l)| {
                l.trim_end_matches('}').split(',').find_map(|kv| {
                    let (k, val) = kv.split_once('=')?;
                    (k == key).then(|| val.trim_matches('"').to_owned())
                })
            })
        };
        if head.starts_with("oxbus_worker_resident_memory_bytes{") {
            if let Some(slot) = label("slot") {
                rss.push((slot, v));
            }
        } else if head.starts_with("oxbus_worker_restarts_total{")
            && let Some(reason) = label("reason")
        {
            restarts.push((reason, v));
        }
    }
    (rss, restarts)
}

/// GET /servers
pub async fn servers(app: &Arc<App>, _r: &Req, s: &Arc<Session>) -> Resp {
    let infos = infos(app, s).await;
    let mut sections = Vec::new();
    for (addr, info) in &infos {
        let api = Api::new(addr, app.settings.metrics_token.as_deref().unwrap_or(""));
        let metrics = api
            .raw("GET", "/metrics", bytes::Bytes::new(), "text/plain")
            .await
            .ok()
            .filter(|(st, _, _)| *st == 200)
            .map(|(_, b, _)| worker_figures(&String::from_utf8_lossy(&b)));
        sections.push(html! {
            @match info {
                Ok(i) => {
                    h2 { "Server " (i["server"].as_str().unwrap_or("?")) " " span.muted { "(" (addr) ")" } }
                    @if s.role.allows(crate::users::Role::Admin) {
                        form.inline method="post" action="/servers/restart" {
                            (super::csrf(s))
                            input type="hidden" name="server" value=(addr);
                            button.secondary type="submit" aria-label=(format!("Rolling restart of the workers of {addr}")) { "Rolling restart of the workers" }
                        }
                    }
                    table {
                        thead { tr {
                            th scope="col" { "Worker" } th scope="col" { "PID" } th scope="col" { "Generation" }
                            th scope="col" { "State" } th.num scope="col" { "In flight" } th.num scope="col" { "Served" }
                            th.num scope="col" { "RSS" }
                        } }
                        tbody {
                            @for w in i["workers"].as_array().cloned().unwrap_or_default() {
                                @let id = w["id"].to_string();
                                tr {
                                    td { (id) } td { (w["pid"]) } td { (w["generation"]) }
                                    td class=(if w["state"] == "ready" { "state-ok" } else { "state-bad" }) { (w["state"].as_str().unwrap_or("?")) }
                                    td.num { (w["inflight"]) } td.num { (num(w["served"].as_f64().unwrap_or(0.0))) }
                                    td.num {
                                        @match metrics.as_ref().and_then(|(rss, _)| rss.iter().find(|(slot, _)| *slot == id)) {
                                            Some((_, b)) => (format!("{:.1} MiB", b / 1048576.0)),
                                            None => span.muted { "–" },
                                        }
                                    }
                                }
                            }
                        }
                    }
                    @match &metrics {
                        Some((_, restarts)) => p {
                            "Worker restarts since the server started: "
                            @if restarts.iter().all(|(_, n)| *n == 0.0) { "none" }
                            @for (reason, n) in restarts.iter().filter(|(_, n)| *n > 0.0) {
                                (reason) " " (num(*n)) "; "
                            }
                        },
                        None => p.muted { "Memory and restarts come from the server's /metrics, which did not answer (metrics_token_file?)." },
                    }
                },
                Err(e) => {
                    h2 { "Server " (addr) }
                    div.flash.error role="alert" { "not answering: " (e) }
                },
            }
        });
    }
    let body = html! {
        (flash(&super::Flash::take(s)))
        p.muted { "A rolling restart replaces each worker of a server once its successor is ready: no request is refused (as "
            code { "systemctl reload" } " does)." }
        @for sec in sections { (sec) }
    };
    ok_page(s, "/servers", "Servers and workers", body)
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_event_splits_data_at_every_line_end() {
        let e = super::sse_event("servers", "<tr>a\rid: x\r\nb\nc</tr>");
        assert_eq!(
            std::str::from_utf8(&e).unwrap(),
            "event: servers\ndata: <tr>a\ndata: id: x\ndata: b\ndata: c</tr>\n\n"
        );
    }
}
