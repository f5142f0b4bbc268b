//! Pub/sub: every topic with its figures, every subscription with its queue's figures, the
//! endpoints; a subscription's page with its definition, figures, queued messages and dead
//! letters (the messages are the applications' data: deployer), a dead letter or all of them
//! requeued (deployer) and the queue purged (admin). Definitions are changed with
//! `oxbus pubsub` or the admin API.

use hyper::Method;
use maud::{Markup, html};
use serde_json::{Value, json};
use std::sync::Arc;

use super::{Flash, api, back, csrf, flash, num, ok_page, pretty, when};
use crate::App;
use crate::api::{ApiError, enc};
use crate::http::{Req, Resp, field, need};
use crate::session::Session;
use crate::users::Role;

const TITLE: &str = "Pub/sub";

/// Messages listed of a queue or of the dead letters unless `?limit=` says otherwise, and
/// the most the admin API lists.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// The paths of this page: `GET /pubsub`, `GET /pubsub/subs/{sub_key}`,
/// `POST /pubsub/subs/{sub_key}/requeue|purge`; `None` for any other.
pub async fn route(app: &Arc<App>, r: &Req, s: &Arc<Session>, segs: &[&str]) -> Option<Resp> {
    let get = r.method == Method::GET;
    let post = r.method == Method::POST;
    match segs {
        ["pubsub"] if get => Some(list(app, s).await),
        ["pubsub", "subs", key] if get => Some(subscription(app, r, s, key).await),
        ["pubsub", "subs", key, "requeue"] if post => Some(requeue(app, r, s, key).await),
        ["pubsub", "subs", key, "purge"] if post => Some(purge(app, s, key).await),
        _ => None,
    }
}

/// The dashboard's page of a subscription (`.` and `..` cannot be a path segment: the
/// list then, with a note).
fn sub_page(key: &str) -> String {
    if crate::api::dot_segment(key) {
        return "/pubsub".to_owned();
    }
    format!("/pubsub/subs/{}", enc(key))
}

/// GET /pubsub
async fn list(app: &Arc<App>, s: &Arc<Session>) -> Resp {
    let a = api(app, s);
    let (topics, subs, endpoints) = tokio::join!(
        a.get("/v1/pubsub/topics"),
        a.get("/v1/pubsub/subs"),
        a.get("/v1/pubsub/endpoints")
    );
    // A refused token ends the session (`failed`); any other error stays in its section.
    if let Some(e) = [&topics, &subs, &endpoints]
        .into_iter()
        .filter_map(|r| r.as_ref().err())
        .find(|e| e.status == Some(401))
    {
        return super::failed(s, "/pubsub", TITLE, e);
    }
    let body = html! {
        (flash(&Flash::take(s)))
        h2 id="topics" { "Topics" }
        (section(&topics, "topics", "No topic.", topics_table))
        h2 id="subscriptions" { "Subscriptions" }
        @if !s.role.allows(Role::Deployer) {
            p.muted { "A subscription's page shows its definition and figures; its queued messages and dead letters are the applications' data and need the deployer role." }
        }
        (section(&subs, "subscriptions", "No subscription.", subs_table))
        h2 id="endpoints" { "Endpoints" }
        (section(&endpoints, "endpoints", "No endpoint.", endpoints_table))
    };
    ok_page(s, "/pubsub", TITLE, body)
}

/// A list of the answer `res` (under `key`) as `table` draws it, `none` when empty, the
/// error when the call failed.
fn section(
    res: &Result<Value, ApiError>,
    key: &str,
    none: &str,
    table: fn(&[Value]) -> Markup,
) -> Markup {
    html! {
        @match res {
            Err(e) => div.flash.error role="alert" { (e.to_string()) },
            Ok(v) => {
                @let list = v[key].as_array().cloned().unwrap_or_default();
                @if list.is_empty() { p.muted { (none) } } @else { (table(&list)) }
            },
        }
    }
}

fn topics_table(topics: &[Value]) -> Markup {
    html! {
        table aria-labelledby="topics" {
            thead { tr {
                th scope="col" { "Topic" } th scope="col" { "Settings" }
                th.num scope="col" { "Last seq" } th.num scope="col" { "Depth (GD)" }
                th.num scope="col" { "Published" } th.num scope="col" { "Rate (msg/s, 1 min)" }
                th.num scope="col" { "Refused (full)" } th.num scope="col" { "Dropped" }
                th scope="col" { "Subscriptions" }
            } }
            tbody {
                @for t in topics {
                    @let st = &t["stats"];
                    tr {
                        td {
                            code { (t["name"].as_str().unwrap_or("?")) }
                            @if let Some(d) = t["description"].as_str().filter(|d| !d.is_empty()) {
                                br; span.muted { (d) }
                            }
                        }
                        td { (dl(&topic_settings(t))) }
                        @if st.is_object() {
                            td.num { (count(&st["last_seq"])) }
                            td.num { (count(&st["depth_gd"])) }
                            td.num { (count(&st["published"])) }
                            td.num { (st["rate_1m"].as_f64().map_or_else(|| "–".into(), |r| format!("{r:.2}"))) }
                            td.num { (count(&st["refused_full"])) }
                            td.num { (count(&st["dropped"])) }
                            td {
                                @let subs = st["subscriptions"].as_array().cloned().unwrap_or_default();
                                @if subs.is_empty() { span.muted { "none" } }
                                @for (i, k) in subs.iter().filter_map(Value::as_str).enumerate() {
                                    @if i > 0 { ", " }
                                    a href=(sub_page(k)) { (k) }
                                }
                            }
                        } @else {
                            td.muted colspan="7" { "No figures: " (t["stats_error"].as_str().unwrap_or("the broker did not give them")) }
                        }
                    }
                }
            }
        }
        p.muted { "Published, rate, refused and dropped count what went through this dashboard's first server since it started; last seq and depth are the cluster's." }
    }
}

fn subs_table(subs: &[Value]) -> Markup {
    html! {
        table aria-labelledby="subscriptions" {
            thead { tr {
                th scope="col" { "Subscription" } th scope="col" { "Topic" } th scope="col" { "Delivery" }
                th scope="col" { "Made by" } th scope="col" { "Delivered by" }
                th.num scope="col" { "Depth" } th.num scope="col" { "In flight" }
                th.num scope="col" { "Delivered" } th.num scope="col" { "Acked" }
                th.num scope="col" { "Failed attempts" } th.num scope="col" { "Dead letters" }
                th scope="col" { "Last delivery (UTC)" }
            } }
            tbody {
                @for sub in subs {
                    @let key = sub["sub_key"].as_str().unwrap_or("?");
                    @let st = &sub["stats"];
                    tr {
                        td { a href=(sub_page(key)) { (key) } }
                        td { code { (sub["topic"].as_str().unwrap_or("")) } }
                        td { (delivery_text(&sub["delivery"])) }
                        td { (made_by(sub)) }
                        @if st.is_object() {
                            td { @match st["owner"].as_str() { Some(o) => (o), None => span.muted { "no server" } } }
                            td.num { (count(&st["depth"])) }
                            td.num { (count(&st["in_flight"])) }
                            td.num { (count(&st["delivered"])) }
                            td.num { (count(&st["acked"])) }
                            td.num { (count(&st["failed_attempts"])) }
                            td class=(if st["dead_letters"].as_u64().unwrap_or(0) > 0 { "num state-bad" } else { "num" }) { (count(&st["dead_letters"])) }
                            td { @match st["last_delivery_ms"].as_i64() { Some(t) => (when(t)), None => span.muted { "–" } } }
                        } @else {
                            td.muted colspan="8" { "No figures: " (sub["stats_error"].as_str().unwrap_or("the broker did not give them")) }
                        }
                    }
                }
            }
        }
    }
}

fn endpoints_table(endpoints: &[Value]) -> Markup {
    html! {
        table aria-labelledby="endpoints" {
            thead { tr {
                th scope="col" { "Endpoint" } th scope="col" { "Security definition" } th scope="col" { "Topic patterns" }
            } }
            tbody {
                @for e in endpoints {
                    tr {
                        td { (e["name"].as_str().unwrap_or("?")) }
                        td { (e["security"].as_str().unwrap_or("")) }
                        td {
                            @let pats = e["topic_patterns"].as_array().cloned().unwrap_or_default();
                            @if pats.is_empty() { span.muted { "none: it may do nothing" } }
                            @for p in pats.iter().filter_map(Value::as_str) { code { (p) } br; }
                        }
                    }
                }
            }
        }
    }
}

/// GET /pubsub/subs/{sub_key}?limit=N
async fn subscription(app: &Arc<App>, r: &Req, s: &Arc<Session>, key: &str) -> Resp {
    let title = format!("Subscription {key}");
    let a = api(app, s);
    let base = format!("/v1/pubsub/subs/{}", enc(key));
    let sub = match a.get(&base).await {
        Ok(v) => v,
        Err(e) => return super::failed(s, "/pubsub", &title, &e),
    };
    let topic = sub["topic"].as_str().unwrap_or("").to_owned();
    let limit = list_limit(r.q("limit"));
    let topic_path = (!topic.contains('*') && !topic.is_empty()).then(|| topic_api_path(&topic));
    let (topic_def, messages) = tokio::join!(
        async {
            match &topic_path {
                Some(p) => Some(a.get(p).await),
                None => None,
            }
        },
        async {
            if s.role.allows(Role::Deployer) {
                let (queue, dead) = (
                    format!("{base}/queue?limit={limit}"),
                    format!("{base}/dead?limit={limit}"),
                );
                Some(tokio::join!(a.get(&queue), a.get(&dead)))
            } else {
                None
            }
        }
    );
    let page = sub_page(key);
    let st = &sub["stats"];
    let mut def = sub.clone();
    if let Some(m) = def.as_object_mut() {
        m.remove("stats");
        m.remove("stats_error");
    }
    let body = html! {
        (flash(&Flash::take(s)))
        p {
            "Topic " code { (topic) } " · delivery " (delivery_text(&sub["delivery"])) " · made by " (made_by(&sub))
        }
        @match &topic_def {
            Some(Ok(t)) if t["stats"].is_object() => p.muted {
                "The topic: last seq " (count(&t["stats"]["last_seq"])) " · depth (GD) " (count(&t["stats"]["depth_gd"]))
                " · max depth " (count(&t["max_depth_gd"])) " GD, " (count(&t["max_depth_non_gd"])) " non-GD · on full: " (t["on_full"].as_str().unwrap_or("?"))
            },
            Some(Err(e)) => p.muted { "The topic: " (e.to_string()) },
            _ => {},
        }
        h2 { "Figures" }
        @if st.is_object() {
            div.cards {
                @for (label, k) in SUB_FIGURES {
                    div.card { div.label { (label) } div.value { (count(&st[*k])) } }
                }
                div.card { div.label { "Delivered by" } div.value { (st["owner"].as_str().unwrap_or("no server")) } }
                div.card { div.label { "Last delivery (UTC)" } div.value { (st["last_delivery_ms"].as_i64().map_or_else(|| "–".into(), when)) } }
            }
        } @else {
            div.flash.error role="alert" { "No figures: " (sub["stats_error"].as_str().unwrap_or("the broker did not give them")) }
        }
        h2 { "Definition" }
        pre { code { (pretty(&def)) } }
        @match messages {
            None => {
                h2 { "Messages" }
                p.muted { "Its queued messages and dead letters are the applications' data: they need the deployer role." }
            },
            Some((queue, dead)) => {
                form.toolbar method="get" action=(page) {
                    div {
                        label for="limit" { "Messages listed (1 to 1,000)" }
                        input type="number" id="limit" name="limit" min="1" max=(MAX_LIMIT) value=(limit);
                    }
                    button.secondary type="submit" { "List" }
                }
                h2 id="queue" { "Queue" }
                @match queue {
                    Err(e) => div.flash.error role="alert" { (e.to_string()) },
                    Ok(q) => {
                        @let list = q["messages"].as_array().cloned().unwrap_or_default();
                        @if list.is_empty() {
                            p.muted { "No message waiting." }
                        } @else {
                            p.muted { (listed(list.len(), limit)) ", in delivery order; data cut." }
                            (messages_table(s, key, &list, false))
                        }
                    },
                }
                @if s.role.allows(Role::Admin) {
                    form method="post" action=(format!("{page}/purge")) {
                        (csrf(s))
                        button.danger type="submit" { "Purge the queue of " (key) }
                    }
                }
                h2 id="dead" { "Dead letters" }
                @match dead {
                    Err(e) => div.flash.error role="alert" { (e.to_string()) },
                    Ok(d) => {
                        @let list = d["messages"].as_array().cloned().unwrap_or_default();
                        @if list.is_empty() {
                            p.muted { "No dead letter." }
                        } @else {
                            p.muted { (listed(list.len(), limit)) ", oldest first; data cut. A requeued message goes back into the queue, its attempts from 0." }
                            (messages_table(s, key, &list, true))
                            form method="post" action=(format!("{page}/requeue")) {
                                (csrf(s))
                                button type="submit" { "Requeue every dead letter" }
                            }
                        }
                    },
                }
            },
        }
        p { a href="/pubsub" { "Back to pub/sub" } }
    };
    ok_page(s, "/pubsub", &title, body)
}

/// A subscription's counters: label, `stats` key.
const SUB_FIGURES: &[(&str, &str)] = &[
    ("Depth", "depth"),
    ("In flight", "in_flight"),
    ("Delivered", "delivered"),
    ("Acked", "acked"),
    ("Failed attempts", "failed_attempts"),
    ("Expired", "expired"),
    ("Overflowed", "overflowed"),
    ("Dead letters", "dead_letters"),
];

fn messages_table(s: &Session, key: &str, list: &[Value], dead: bool) -> Markup {
    html! {
        table aria-labelledby=(if dead { "dead" } else { "queue" }) {
            thead { tr {
                th scope="col" { "Message" } th.num scope="col" { "Seq" } th.num scope="col" { "Priority" }
                th scope="col" { "Published (UTC)" } th scope="col" { "Expires (UTC)" }
                th scope="col" { "Type" } th.num scope="col" { "Size" } th.num scope="col" { "Deliveries" }
                th scope="col" { "Data" }
                @if dead {
                    th scope="col" { "Reason" }
                    th scope="col" { span.visually-hidden { "Actions" } }
                }
            } }
            tbody {
                @for m in list {
                    @let id = m["msg_id"].as_str().unwrap_or("?");
                    tr {
                        td { code { (id) } }
                        td.num { @if m["seq"].as_i64().unwrap_or(0) > 0 { (count(&m["seq"])) } @else { span.muted { "non-GD" } } }
                        td.num { (count(&m["priority"])) }
                        td { (m["pub_time_ms"].as_i64().map_or_else(|| "–".into(), when)) }
                        td { @match m["expires_at_ms"].as_i64() { Some(t) => (when(t)), None => span.muted { "never" } } }
                        td { (m["mime_type"].as_str().unwrap_or("")) }
                        td.num { (count(&m["size"])) " B" }
                        td.num { (count(&m["delivery_count"])) }
                        td { code.msg-data { (m["data"].as_str().unwrap_or("")) } }
                        @if dead {
                            td { (m["reason"].as_str().unwrap_or("")) }
                            td {
                                form.inline method="post" action=(format!("{}/requeue", sub_page(key))) {
                                    (csrf(s))
                                    input type="hidden" name="msg_id" value=(id);
                                    button.secondary type="submit" aria-label=(format!("Requeue {id}")) { "Requeue" }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// POST /pubsub/subs/{sub_key}/requeue: the form's `msg_id`, or every dead letter when it
/// has none.
async fn requeue(app: &Arc<App>, r: &Req, s: &Arc<Session>, key: &str) -> Resp {
    if let Some(resp) = need(s, Role::Deployer) {
        return resp;
    }
    let f = r.form();
    let id = field(&f, "msg_id").trim();
    let to = sub_page(key);
    match api(app, s)
        .send(
            "POST",
            &format!("/v1/pubsub/subs/{}/requeue", enc(key)),
            &requeue_body(id),
        )
        .await
    {
        Ok(v) => back(
            s,
            &to,
            Ok(requeue_message(id, v["requeued"].as_u64().unwrap_or(0))),
        ),
        Err(e) => back(s, &to, Err(format!("Not requeued: {e}"))),
    }
}

/// POST /pubsub/subs/{sub_key}/purge
async fn purge(app: &Arc<App>, s: &Arc<Session>, key: &str) -> Resp {
    if let Some(resp) = need(s, Role::Admin) {
        return resp;
    }
    let to = sub_page(key);
    match api(app, s)
        .send(
            "POST",
            &format!("/v1/pubsub/subs/{}/purge", enc(key)),
            &Value::Null,
        )
        .await
    {
        Ok(v) => {
            let n = v["purged"].as_u64().unwrap_or(0);
            back(
                s,
                &to,
                Ok(format!(
                    "Purged {} from the queue of {key}.",
                    plural(n, "message")
                )),
            )
        }
        Err(e) => back(s, &to, Err(format!("Not purged: {e}"))),
    }
}

/// The requeue's body: the one message, or `{}` (every dead letter).
fn requeue_body(msg_id: &str) -> Value {
    if msg_id.is_empty() {
        json!({})
    } else {
        json!({ "msg_ids": [msg_id] })
    }
}

fn requeue_message(msg_id: &str, n: u64) -> String {
    match (msg_id, n) {
        ("", n) => format!("Requeued {}.", plural(n, "dead letter")),
        (id, 0) => {
            format!("Nothing requeued: {id} is no longer a dead letter of this subscription.")
        }
        (id, _) => format!("Requeued {id}."),
    }
}

/// How many messages a listing has, and the most it could have had.
fn listed(n: usize, limit: usize) -> String {
    format!(
        "{} listed (at most {})",
        plural(n as u64, "message"),
        num(limit as f64)
    )
}

fn plural(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{} {what}s", num(n as f64))
    }
}

/// `?limit=`: 1 to [`MAX_LIMIT`], [`DEFAULT_LIMIT`] when absent or not a number.
fn list_limit(q: Option<&str>) -> usize {
    q.and_then(|v| v.trim().parse::<usize>().ok())
        .map_or(DEFAULT_LIMIT, |n| n.clamp(1, MAX_LIMIT))
}

/// A topic's admin API path: its name is the rest of the path (`{name...}`), the name's `/`
/// the separator, each segment encoded (`/orders/new` is `/v1/pubsub/topics/orders/new`).
fn topic_api_path(name: &str) -> String {
    let mut p = String::from("/v1/pubsub/topics");
    for seg in name.split('/').filter(|s| !s.is_empty()) {
        p.push('/');
        p.push_str(&enc(seg));
    }
    p
}

/// How a subscription's messages reach the subscriber, in words.
fn delivery_text(d: &Value) -> String {
    let s = |k: &str| d[k].as_str().filter(|v| !v.is_empty());
    match d["type"].as_str().unwrap_or("") {
        "service" => format!("service {}", s("service").unwrap_or("?")),
        "pull" => "pull".into(),
        "websocket" => format!("WebSocket client {}", s("client_id").unwrap_or("?")),
        "push" => {
            let method = s("method").unwrap_or("POST");
            match (s("conn"), s("url")) {
                (Some(c), _) => format!(
                    "push: {method} through connection {c}{}",
                    s("path").map(|p| format!(", path {p}")).unwrap_or_default()
                ),
                (None, Some(u)) => format!("push: {method} {u}"),
                (None, None) => format!("push: {method}"),
            }
        }
        "" => "?".into(),
        other => other.to_owned(),
    }
}

/// Who made a subscription and, when one did, its endpoint.
fn made_by(sub: &Value) -> String {
    let by = sub["created_by"].as_str().unwrap_or("");
    match sub["endpoint"].as_str() {
        Some(e) if !by.contains(e) => format!("{by} (endpoint {e})").trim().to_owned(),
        _ if by.is_empty() => "–".into(),
        _ => by.to_owned(),
    }
}

/// A topic's definition in words: label, value.
fn topic_settings(t: &Value) -> Vec<(String, String)> {
    let mut out = vec![
        (
            "GD by default".to_owned(),
            if t["has_gd"] == false { "no" } else { "yes" }.to_owned(),
        ),
        (
            "Max depth".into(),
            format!(
                "{} GD, {} non-GD",
                count(&t["max_depth_gd"]),
                count(&t["max_depth_non_gd"])
            ),
        ),
        (
            "On full".into(),
            t["on_full"].as_str().unwrap_or("refuse").to_owned(),
        ),
        (
            "Expiration".into(),
            t["expiration_ms"]
                .as_f64()
                .map_or_else(|| "never".into(), |ms| format!("{} ms", num(ms))),
        ),
        (
            "No subscription".into(),
            t["on_no_subs"].as_str().unwrap_or("keep").to_owned(),
        ),
        (
            "Max message".into(),
            format!("{} B", count(&t["max_message_bytes"])),
        ),
    ];
    out.retain(|(_, v)| !v.is_empty());
    out
}

fn dl(fields: &[(String, String)]) -> Markup {
    html! {
        dl.fields {
            @for (k, v) in fields { dt { (k) } dd { (v) } }
        }
    }
}

/// A counter (`–` when absent).
fn count(v: &Value) -> String {
    v.as_f64().map_or_else(|| "–".into(), num)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_paths_are_the_rest_of_the_path() {
        assert_eq!(
            topic_api_path("/orders/new"),
            "/v1/pubsub/topics/orders/new"
        );
        assert_eq!(topic_api_path("/a b/.."), "/v1/pubsub/topics/a%20b/%2E%2E");
        assert_eq!(sub_page("sk.1/x"), "/pubsub/subs/sk.1%2Fx");
    }

    #[test]
    fn limits_are_bounded() {
        assert_eq!(list_limit(None), 100);
        assert_eq!(list_limit(Some("many")), 100);
        assert_eq!(list_limit(Some("0")), 1);
        assert_eq!(list_limit(Some("5")), 5);
        assert_eq!(list_limit(Some("5000")), 1000);
    }

    #[test]
    fn requeue_bodies_and_messages() {
        assert_eq!(requeue_body(""), json!({}));
        assert_eq!(requeue_body("zpsm1"), json!({"msg_ids": ["zpsm1"]}));
        assert_eq!(requeue_message("", 3), "Requeued 3 dead letters.");
        assert_eq!(requeue_message("", 1), "Requeued 1 dead letter.");
        assert_eq!(requeue_message("zpsm1", 1), "Requeued zpsm1.");
        assert!(requeue_message("zpsm1", 0).starts_with("Nothing requeued"));
        assert_eq!(plural(1200, "message"), "1,200 messages");
        assert_eq!(listed(1, 100), "1 message listed (at most 100)");
    }

    #[test]
    fn deliveries_and_makers_in_words() {
        assert_eq!(
            delivery_text(&json!({"type": "service", "service": "demo.x"})),
            "service demo.x"
        );
        assert_eq!(delivery_text(&json!({"type": "pull"})), "pull");
        assert_eq!(
            delivery_text(
                &json!({"type": "push", "conn": "crm", "path": "/hook", "method": "PUT"})
            ),
            "push: PUT through connection crm, path /hook"
        );
        assert_eq!(
            delivery_text(&json!({"type": "push", "url": "https://h/p", "method": "POST"})),
            "push: POST https://h/p"
        );
        assert_eq!(
            delivery_text(&json!({"type": "websocket", "client_id": "ws.a.1"})),
            "WebSocket client ws.a.1"
        );
        assert_eq!(delivery_text(&Value::Null), "?");
        assert_eq!(
            made_by(&json!({"created_by": "admin:alice"})),
            "admin:alice"
        );
        assert_eq!(
            made_by(&json!({"created_by": "endpoint:crm", "endpoint": "crm"})),
            "endpoint:crm"
        );
        assert_eq!(
            made_by(&json!({"created_by": "admin:root", "endpoint": "crm"})),
            "admin:root (endpoint crm)"
        );
        assert_eq!(made_by(&json!({})), "–");
    }

    #[test]
    fn topic_settings_in_words() {
        let t = json!({"name": "/a", "has_gd": true, "max_depth_gd": 100000, "max_depth_non_gd": 10000,
            "on_full": "overflow", "on_no_subs": "drop", "max_message_bytes": 1048576});
        let s: Vec<String> = topic_settings(&t)
            .into_iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        assert_eq!(
            s,
            vec![
                "GD by default: yes",
                "Max depth: 100,000 GD, 10,000 non-GD",
                "On full: overflow",
                "Expiration: never",
                "No subscription: drop",
                "Max message: 1,048,576 B",
            ]
        );
    }
}
