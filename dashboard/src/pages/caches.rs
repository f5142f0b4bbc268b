//! Caches: every cache with its figures; a cache's keys by prefix, a page at a time (a
//! cache's contents are the applications' data: deployer); one entry viewed, edited (JSON)
//! or deleted, and the whole cache cleared (admin).

use maud::html;
use serde_json::{Value, json};
use std::sync::Arc;

use super::{Flash, api, back, csrf, flash, num, ok_page, pretty};
use crate::App;
use crate::api::enc;
use crate::http::{Req, Resp, field, need};
use crate::session::Session;
use crate::users::Role;

/// GET /caches
pub async fn list(app: &Arc<App>, _r: &Req, s: &Arc<Session>) -> Resp {
    let v = match api(app, s).get("/v1/caches").await {
        Ok(v) => v,
        Err(e) => return super::failed(s, "/caches", "Caches", &e),
    };
    let body = html! {
        (flash(&Flash::take(s)))
        table {
            thead { tr {
                th scope="col" { "Cache" } th.num scope="col" { "Entries" } th.num scope="col" { "Max entries" }
                th.num scope="col" { "Hits" } th.num scope="col" { "Misses" } th.num scope="col" { "Sets" }
                th.num scope="col" { "Evictions" } th scope="col" { "Expiry" } th scope="col" { "Replicated" }
            } }
            tbody {
                @for c in v["caches"].as_array().cloned().unwrap_or_default() {
                    @let name = c["name"].as_str().unwrap_or("?").to_owned();
                    tr {
                        td { a href=(format!("/caches/{}", enc(&name))) { (name) } }
                        @for k in ["entries", "max_entries", "hits", "misses", "sets", "evictions"] {
                            td.num { (num(c[k].as_f64().unwrap_or(0.0))) }
                        }
                        td { @if c["default_expiry_s"].as_u64().unwrap_or(0) == 0 { "never" } @else { (c["default_expiry_s"]) " s" } }
                        td { @if c["replicate"] == true { "yes" } @else { "no" } }
                    }
                }
            }
        }
    };
    ok_page(s, "/caches", "Caches", body)
}

/// GET /caches/{name}?prefix=&after=
pub async fn detail(app: &Arc<App>, r: &Req, s: &Arc<Session>, name: &str) -> Resp {
    let title = format!("Cache {name}");
    let prefix = r.q("prefix").unwrap_or("");
    let mut path = format!(
        "/v1/caches/{}/keys?limit=100&prefix={}",
        enc(name),
        enc(prefix)
    );
    if let Some(after) = r.q("after") {
        path.push_str(&format!("&after={}", enc(after)));
    }
    let a = api(app, s);
    let def = match a.get(&format!("/v1/caches/{}", enc(name))).await {
        Ok(v) => v,
        Err(e) => return super::failed(s, "/caches", &title, &e),
    };
    let keys = if s.role.allows(Role::Deployer) {
        Some(a.get(&path).await)
    } else {
        None
    };
    let base = format!("/caches/{}", enc(name));
    let body = html! {
        (flash(&Flash::take(s)))
        p { (num(def["entries"].as_f64().unwrap_or(0.0))) " entries · " (num(def["hits"].as_f64().unwrap_or(0.0))) " hits · " (num(def["misses"].as_f64().unwrap_or(0.0))) " misses" }
        @match keys {
            None => p.muted { "A cache's contents need the deployer role." },
            Some(Err(e)) => div.flash.error role="alert" { (e.to_string()) },
            Some(Ok(k)) => {
                form.toolbar method="get" action=(base) role="search" {
                    div {
                        label for="prefix" { "Keys starting with" }
                        input type="search" id="prefix" name="prefix" value=(prefix)
                            hx-get=(base) hx-trigger="input changed delay:250ms, search"
                            hx-target="#keys" hx-select="#keys" hx-swap="outerHTML";
                    }
                    button.secondary type="submit" { "Browse" }
                }
                div id="keys" {
                    ul {
                        @for key in k["keys"].as_array().cloned().unwrap_or_default() {
                            @let key = key.as_str().unwrap_or("").to_owned();
                            li { a href=(format!("{base}/entry?key={}", enc(&key))) { code { (key) } } }
                        }
                    }
                    @if k["keys"].as_array().is_none_or(Vec::is_empty) { p { "No key." } }
                    @if let Some(next) = k["next"].as_str() {
                        a href=(format!("{base}?prefix={}&after={}", enc(prefix), enc(next))) { "Next keys" }
                    }
                }
                @if s.role.allows(Role::Admin) {
                    h2 { "Add or replace an entry" }
                    (entry_form(s, name, "", "", ""))
                    h2 { "Clear" }
                    form.inline method="post" action=(format!("{base}/clear")) {
                        (csrf(s))
                        button.danger type="submit" { "Clear every entry of " (name) }
                    }
                }
            },
        }
    };
    ok_page(s, "/caches", &title, body)
}

fn entry_form(s: &Session, cache: &str, key: &str, value: &str, expiry: &str) -> maud::Markup {
    html! {
        form.stack method="post" action=(format!("/caches/{}/entry", enc(cache))) {
            (csrf(s))
            div { label for="key" { "Key" } input type="text" id="key" name="key" value=(key) required; }
            div { label for="value" { "Value (JSON)" } textarea.code id="value" name="value" rows="6" { (value) } }
            div { label for="expiry" { "Expires in (seconds; empty: the cache's default)" } input type="number" id="expiry" name="expiry" min="0" value=(expiry); }
            div { button type="submit" { "Save" } }
        }
    }
}

/// GET /caches/{name}/entry?key=K
pub async fn entry(app: &Arc<App>, r: &Req, s: &Arc<Session>, cache: &str) -> Resp {
    let key = r.q("key").unwrap_or("");
    let title = format!("Cache {cache}: {key}");
    if let Some(resp) = need(s, Role::Deployer) {
        return resp;
    }
    let v = match api(app, s)
        .get(&format!("/v1/caches/{}/keys/{}", enc(cache), enc(key)))
        .await
    {
        Ok(v) => v,
        Err(e) => return super::failed(s, "/caches", &title, &e),
    };
    let value = if v["type"] == "json" {
        pretty(&v["value"])
    } else {
        v["value"].as_str().unwrap_or("").to_owned()
    };
    let body = html! {
        (flash(&Flash::take(s)))
        p { "Type " (v["type"].as_str().unwrap_or("?")) " · "
            @match v["expires_in_s"].as_f64() { Some(x) => { "expires in " (num(x.round())) " s" }, None => "never expires" } }
        @if s.role.allows(Role::Admin) && v["type"] == "json" {
            (entry_form(s, cache, key, &value, &v["expires_in_s"].as_f64().map(|x| (x.ceil() as u64).to_string()).unwrap_or_default()))
            form.inline method="post" action=(format!("/caches/{}/entry/delete", enc(cache))) {
                (csrf(s))
                input type="hidden" name="key" value=(key);
                button.danger type="submit" { "Delete this entry" }
            }
        } @else {
            pre { code { (value) } }
        }
        p { a href=(format!("/caches/{}", enc(cache))) { "Back to the keys of " (cache) } }
    };
    ok_page(s, "/caches", &title, body)
}

/// POST /caches/{name}/entry
pub async fn put_entry(app: &Arc<App>, r: &Req, s: &Arc<Session>, cache: &str) -> Resp {
    if let Some(resp) = need(s, Role::Admin) {
        return resp;
    }
    let f = r.form();
    let (key, value, expiry) = (
        field(&f, "key"),
        field(&f, "value"),
        field(&f, "expiry").trim(),
    );
    let back_to = format!("/caches/{}/entry?key={}", enc(cache), enc(key));
    if key.is_empty() {
        return back(
            s,
            &format!("/caches/{}", enc(cache)),
            Err("The key is empty.".into()),
        );
    }
    let value: Value = match serde_json::from_str(value) {
        Ok(v) => v,
        Err(e) => {
            return back(
                s,
                &format!("/caches/{}", enc(cache)),
                Err(format!("The value is not JSON: {e}")),
            );
        }
    };
    let mut doc = json!({ "value": value });
    if !expiry.is_empty() {
        match expiry.parse::<u64>() {
            Ok(x) => doc["expiry"] = json!(x),
            Err(_) => {
                return back(
                    s,
                    &back_to,
                    Err(format!("expiry {expiry:?} is not a number of seconds")),
                );
            }
        }
    }
    match api(app, s)
        .send(
            "PUT",
            &format!("/v1/caches/{}/keys/{}", enc(cache), enc(key)),
            &doc,
        )
        .await
    {
        Ok(_) => back(s, &back_to, Ok(format!("Saved {key}."))),
        Err(e) => back(
            s,
            &format!("/caches/{}", enc(cache)),
            Err(format!("Not saved: {e}")),
        ),
    }
}

/// POST /caches/{name}/entry/delete
pub async fn delete_entry(app: &Arc<App>, r: &Req, s: &Arc<Session>, cache: &str) -> Resp {
    if let Some(resp) = need(s, Role::Admin) {
        return resp;
    }
    let f = r.form();
    let key = field(&f, "key");
    let to = format!("/caches/{}", enc(cache));
    match api(app, s)
        .call(
            "DELETE",
            &format!("/v1/caches/{}/keys/{}", enc(cache), enc(key)),
            bytes::Bytes::new(),
            "application/json",
        )
        .await
    {
        Ok(v) if v["deleted"] == true => back(s, &to, Ok(format!("Deleted {key}."))),
        Ok(_) => back(s, &to, Ok(format!("{key} was already gone."))),
        Err(e) => back(s, &to, Err(format!("Not deleted: {e}"))),
    }
}

/// POST /caches/{name}/clear
pub async fn clear(app: &Arc<App>, _r: &Req, s: &Arc<Session>, cache: &str) -> Resp {
    if let Some(resp) = need(s, Role::Admin) {
        return resp;
    }
    let to = format!("/caches/{}", enc(cache));
    match api(app, s)
        .send(
            "POST",
            &format!("/v1/caches/{}/clear", enc(cache)),
            &Value::Null,
        )
        .await
    {
        Ok(v) => back(s, &to, Ok(format!("Cleared {} entries.", v["cleared"]))),
        Err(e) => back(s, &to, Err(format!("Not cleared: {e}"))),
    }
}
