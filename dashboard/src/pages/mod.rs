//! The pages: one file per thing an operator manages, the layout they share, and the table
//! of paths. Each page reads what it shows from the admin API with the signed-in user's
//! token; an action is offered only to a role that may do it, and refused here (403)
//! before the API would refuse it too.

pub mod audit;
pub mod caches;
pub mod channels;
pub mod charts;
pub mod config;
pub mod deploy;
pub mod jobs;
pub mod outgoing;
pub mod overview;
pub mod pubsub;
pub mod security;
pub mod services;
pub mod signin;

use hyper::{Method, StatusCode};
use maud::{DOCTYPE, Markup, html};
use std::sync::Arc;

use crate::App;
use crate::api::{Api, ApiError};
use crate::http::{Req, Resp};
use crate::session::Session;
use crate::users::Role;

/// The pages of the navigation: path, title, the least role that sees the link.
const NAV: &[(&str, &str, Role)] = &[
    ("/", "Overview", Role::Viewer),
    ("/servers", "Servers and workers", Role::Viewer),
    ("/services", "Services", Role::Viewer),
    ("/deploy", "Deploy", Role::Viewer),
    ("/channels", "Channels", Role::Viewer),
    ("/security", "Security definitions", Role::Viewer),
    ("/secrets", "Secrets", Role::Viewer),
    ("/caches", "Caches", Role::Viewer),
    ("/jobs", "Scheduler", Role::Viewer),
    ("/outgoing", "Connections", Role::Viewer),
    ("/pubsub", "Pub/sub", Role::Viewer),
    ("/audit", "Audit log", Role::Viewer),
    ("/config", "Config export/import", Role::Viewer),
    ("/tokens", "API tokens", Role::Admin),
];

/// The API of the first server, as the signed-in user (a 401 ends the session).
pub fn api(app: &App, s: &Session) -> Api {
    user_api(&app.settings.servers[0], s)
}

/// Server `authority`'s API as the signed-in user: a 401 (the token revoked) marks the
/// session, which ends at its next request.
pub fn user_api(authority: &str, s: &Session) -> Api {
    let mut a = Api::new(authority, &s.token);
    a.on_401 = Some(s.revoked.clone());
    a
}

/// Every server's API, as the signed-in user.
pub fn apis(app: &App, s: &Session) -> Vec<Api> {
    app.settings
        .servers
        .iter()
        .map(|a| user_api(a, s))
        .collect()
}

/// A message shown at the top of a page.
pub enum Flash {
    Ok(String),
    Error(String),
}

impl Flash {
    /// The message a form's redirect left in the session, taken (shown once).
    pub fn take(s: &Session) -> Option<Flash> {
        s.take_flash()
            .map(|(ok, m)| if ok { Flash::Ok(m) } else { Flash::Error(m) })
    }
}

pub fn flash(f: &Option<Flash>) -> Markup {
    html! {
        @match f {
            Some(Flash::Ok(m)) => div.flash.ok role="status" { (m) },
            Some(Flash::Error(m)) => div.flash.error role="alert" { (m) },
            None => {},
        }
    }
}

/// The redirect to `path` after a form, the outcome kept in the session for that page
/// (not in the URL: a link cannot make a page say something).
pub fn back(s: &Session, path: &str, result: Result<String, String>) -> Resp {
    match result {
        Ok(m) => s.set_flash(true, m),
        Err(m) => s.set_flash(false, m),
    }
    crate::http::redirect(path)
}

/// The hidden CSRF field every form carries.
pub fn csrf(s: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(s.csrf); }
}

/// The `<meta>`s, title, icon and style sheet every page's `<head>` starts with.
pub fn head_common(title: &str) -> Markup {
    html! {
        meta charset="utf-8";
        meta name="viewport" content="width=device-width, initial-scale=1";
        title { (title) " · Oxbus" }
        link rel="icon" href="data:,";
        link rel="stylesheet" href="/static/dashboard.css";
    }
}

/// Form fields from pairs (the pages' unit tests).
#[cfg(test)]
pub fn form_pairs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// A whole page: the top bar, the navigation, `body`.
pub fn page(s: &Session, current: &str, title: &str, body: Markup) -> Markup {
    let hx_headers = serde_json::json!({ "X-CSRF-Token": s.csrf }).to_string();
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                (head_common(title))
                meta name="htmx-config" content=r#"{"includeIndicatorStyles":false,"allowEval":false,"allowScriptTags":false,"historyCacheSize":0}"#;
                script src="/static/htmx.min.js" {}
                script src="/static/htmx-sse.min.js" {}
            }
            body hx-headers=(hx_headers) {
                a.visually-hidden href="#main" { "Skip to the content" }
                header.top {
                    a.brand href="/" { "Oxbus" }
                    span { "cluster console" }
                    div.who {
                        span { (s.user) " · " (s.role.as_str()) }
                        form method="post" action="/signout" {
                            (csrf(s))
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                div.layout {
                    nav.side aria-label="Pages" {
                        ul {
                            @for (path, name, _) in NAV.iter().filter(|(_, _, r)| s.role.allows(*r)) {
                                li {
                                    @if *path == current {
                                        a href=(path) aria-current="page" { (name) }
                                    } @else {
                                        a href=(path) { (name) }
                                    }
                                }
                            }
                        }
                    }
                    main id="main" {
                        h1 { (title) }
                        (body)
                    }
                }
            }
        }
    }
}

/// The page for an API call that failed. A 401 means the servers no longer know the
/// user's token (revoked, or the user removed): the session ends at its next request.
pub fn failed(s: &Session, current: &str, title: &str, e: &ApiError) -> Resp {
    if e.status == Some(401) {
        s.revoked.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut r = crate::http::text(
            StatusCode::UNAUTHORIZED,
            "The servers refused your API token (revoked?): sign in again.",
        );
        r.headers_mut().insert(
            hyper::header::REFRESH,
            hyper::header::HeaderValue::from_static("0; url=/signin"),
        );
        return r;
    }
    let status = match e.status {
        Some(403) => StatusCode::FORBIDDEN,
        Some(404) => StatusCode::NOT_FOUND,
        _ => StatusCode::BAD_GATEWAY,
    };
    crate::http::html(
        status,
        page(
            s,
            current,
            title,
            html! { div.flash.error role="alert" { (e.to_string()) } },
        ),
    )
}

pub fn ok_page(s: &Session, current: &str, title: &str, body: Markup) -> Resp {
    crate::http::html(StatusCode::OK, page(s, current, title, body))
}

/// A number as people read it: 1,234 or 12.3.
pub fn num(x: f64) -> String {
    if !x.is_finite() {
        return "–".into();
    }
    if x.fract() == 0.0 && x.abs() < 1e15 {
        let s = format!("{}", x as i64);
        let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        format!("{sign}{out}")
    } else {
        format!("{x:.1}")
    }
}

/// Milliseconds since the epoch as UTC `YYYY-MM-DD HH:MM:SS`.
pub fn when(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The segments of a path, each percent-decoded (`%XX` only; `+` and `&` are themselves).
pub fn segments(path: &str) -> Vec<String> {
    path.trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The table of paths (after the gate: a live session, and the CSRF token on a POST).
pub async fn route(app: &Arc<App>, r: &Req, s: &Arc<Session>) -> Resp {
    let segs = segments(&r.path);
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let get = r.method == Method::GET;
    let post = r.method == Method::POST;
    if let Some(resp) = outgoing::route(app, r, s, &segs).await {
        return resp;
    }
    if let Some(resp) = pubsub::route(app, r, s, &segs).await {
        return resp;
    }
    if let Some(resp) = security::route(app, r, s, &segs).await {
        return resp;
    }
    match segs.as_slice() {
        [] if get => overview::page(app, r, s).await,
        ["live", "overview"] if get => overview::live(app, s),
        ["servers"] if get => overview::servers(app, r, s).await,
        ["services"] if get => services::list(app, r, s).await,
        ["services", name] if get => services::detail(app, r, s, name).await,
        ["services", name, "invoke"] if post => services::invoke(app, r, s, name).await,
        ["modules", name, "rollback"] if post => services::rollback(app, r, s, name).await,
        ["modules", name, "diff"] if get => services::diff(app, r, s, name).await,
        ["deploy"] if get => deploy::form(app, r, s),
        ["deploy"] if post => deploy::submit(app, r, s).await,
        ["channels"] if get => channels::list(app, r, s).await,
        ["channels", "new"] if get => channels::new_form(app, r, s).await,
        ["channels"] if post => channels::create(app, r, s).await,
        ["channels", name, "delete"] if post => channels::delete(app, r, s, name).await,
        ["channels", name, "edit"] if get => channels::edit_form(app, r, s, name).await,
        ["channels", name, "edit"] if post => channels::edit(app, r, s, name).await,
        ["caches"] if get => caches::list(app, r, s).await,
        ["caches", name] if get => caches::detail(app, r, s, name).await,
        ["caches", name, "clear"] if post => caches::clear(app, r, s, name).await,
        ["caches", name, "entry"] if get => caches::entry(app, r, s, name).await,
        ["caches", name, "entry"] if post => caches::put_entry(app, r, s, name).await,
        ["caches", name, "entry", "delete"] if post => caches::delete_entry(app, r, s, name).await,
        ["jobs"] if get => jobs::list(app, r, s).await,
        ["jobs", name] if get => jobs::detail(app, r, s, name).await,
        ["jobs", name, action] if post => jobs::action(app, r, s, name, action).await,
        ["audit"] if get => audit::page(app, r, s).await,
        ["openapi"] if get => channels::openapi(app, s).await,
        ["config"] if get => config::page(app, r, s).await,
        ["config", "export"] if get => config::export(app, r, s).await,
        ["config", "plan"] if post => config::plan(app, r, s).await,
        ["config", "apply"] if post => config::apply(app, r, s).await,
        ["servers", "restart"] if post => overview::restart(app, r, s).await,
        _ => crate::http::html(
            StatusCode::NOT_FOUND,
            page(
                s,
                "",
                "Not found",
                html! { p { "There is no page " code { (r.path) } " here." } },
            ),
        ),
    }
}

/// A JSON value as indented text.
pub fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn numbers_and_dates() {
        assert_eq!(super::num(1234567.0), "1,234,567");
        assert_eq!(super::num(-1000.0), "-1,000");
        assert_eq!(super::num(12.345), "12.3");
        assert_eq!(super::when(0), "1970-01-01 00:00:00");
        assert_eq!(super::when(1_796_601_600_000), "2026-12-07 00:00:00");
        assert_eq!(
            super::segments("/services/demo.echo/x%2Fy"),
            vec!["services", "demo.echo", "x/y"]
        );
        assert_eq!(
            super::segments("/a+b/c&d/%zz/%41"),
            vec!["a+b", "c&d", "%zz", "A"]
        );
    }
}
