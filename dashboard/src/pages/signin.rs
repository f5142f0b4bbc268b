//! Sign-in. The form carries a token that must match a cookie set with it (SameSite=Strict),
//! so another site cannot sign a browser in under its own account. Failures are limited per
//! address and per user name (`session::SignInLimit`), argon2 runs off the async threads,
//! two at a time, and an unknown user costs the same hash as a known one.

use hyper::StatusCode;
use hyper::header;
use maud::{DOCTYPE, Markup, html};
use std::sync::Arc;
use tracing::{info, warn};

use crate::App;
use crate::http::{self, PRE_COOKIE, Req, Resp, SESSION_COOKIE, field};
use crate::session::random_hex;
use crate::users::{User, Users};

/// Where to go after sign-in: a local path only — `/` then printable ASCII without a
/// backslash, never `//` (browsers drop tabs and newlines from a URL, so `/\t/evil` would be
/// `//evil`: anything but printable ASCII is refused).
fn next_path(n: &str) -> &str {
    let printable = n.bytes().all(|b| (0x21..0x7f).contains(&b) && b != b'\\');
    if printable && n.starts_with('/') && !n.starts_with("//") {
        n
    } else {
        "/"
    }
}

fn shell(pre: &str, next: &str, user: &str, error: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head { (super::head_common("Sign in")) }
            body {
                main.signin {
                    h1 { "Oxbus: sign in" }
                    @if let Some(e) = error {
                        div.flash.error role="alert" id="signin-error" { (e) }
                    }
                    form.stack method="post" action="/signin" {
                        input type="hidden" name="pre" value=(pre);
                        input type="hidden" name="next" value=(next);
                        div {
                            label for="user" { "User" }
                            input type="text" id="user" name="user" value=(user)
                                autocomplete="username" required autofocus;
                        }
                        div {
                            label for="password" { "Password" }
                            input type="password" id="password" name="password"
                                autocomplete="current-password" required;
                        }
                        div { button type="submit" { "Sign in" } }
                    }
                }
            }
        }
    }
}

/// GET /signin (also the page a failed sign-in answers with).
pub fn form(
    app: &Arc<App>,
    next: &str,
    pre: Option<String>,
    error: Option<(StatusCode, &str, &str)>,
) -> Resp {
    // The browser's token is kept (another tab's form, or a request the browser makes on
    // its own, must not make this form's token stale); a new one otherwise.
    let pre = pre
        .filter(|p| p.len() == 32 && p.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_else(|| random_hex(16));
    let next = next_path(next).to_owned();
    let (status, user, msg) = match error {
        Some((st, user, msg)) => (st, user, Some(msg)),
        None => (StatusCode::OK, "", None),
    };
    let mut resp = http::html(status, shell(&pre, &next, user, msg));
    resp.headers_mut().insert(
        header::SET_COOKIE,
        http::cookie(app, PRE_COOKIE, &pre, None),
    );
    resp
}

/// A fixed hash checked for unknown users, so that they take as long as known ones.
fn dummy() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| {
        use argon2::password_hash::{PasswordHasher, SaltString};
        let salt = SaltString::encode_b64(&[7u8; 16]).expect("salt");
        argon2::Argon2::default()
            .hash_password(b"no such user", &salt)
            .expect("hash")
            .to_string()
    })
}

/// POST /signin
pub async fn submit(app: &Arc<App>, r: &Req) -> Resp {
    let f = r.form();
    let (user, password, pre) = (field(&f, "user"), field(&f, "password"), field(&f, "pre"));
    let next = next_path(field(&f, "next")).to_owned();
    let cookie_pre = r.cookie(&http::cookie_name(app, PRE_COOKIE));
    let retry =
        |st: StatusCode, msg: &str| form(app, &next, cookie_pre.clone(), Some((st, user, msg)));
    if pre.is_empty() || cookie_pre.as_deref() != Some(pre) {
        return retry(
            StatusCode::FORBIDDEN,
            "The sign-in form expired or came from elsewhere: try again.",
        );
    }
    let addr = r.client(&app.settings.trusted_proxies);
    // The attempt counts from here (as a failure unless it succeeds).
    if let Err(wait) = app.limit.attempt(addr, user) {
        warn!(user = %user.chars().take(64).collect::<String>(), %addr, "sign-in refused: too many failures");
        return retry(
            StatusCode::TOO_MANY_REQUESTS,
            &format!(
                "Too many failed sign-ins: try again in {} s.",
                wait.as_secs().max(1)
            ),
        );
    }
    let users = match Users::load(&app.settings.users_file) {
        Ok(u) => u,
        Err(e) => {
            warn!(error = %e, "cannot read the users file");
            return retry(
                StatusCode::SERVICE_UNAVAILABLE,
                "The dashboard cannot read its users file; see its log.",
            );
        }
    };
    let found: Option<User> = users.get(user).cloned();
    let Ok(_permit) = app.argon.acquire().await else {
        return retry(
            StatusCode::SERVICE_UNAVAILABLE,
            "The dashboard is stopping.",
        );
    };
    let pw = password.to_owned();
    let opened = tokio::task::spawn_blocking(move || match found {
        Some(u) => u.open(&pw).map(|t| (u, t)),
        None => {
            use argon2::password_hash::PasswordVerifier;
            if let Ok(h) = argon2::PasswordHash::new(dummy()) {
                let _ = argon2::Argon2::default().verify_password(pw.as_bytes(), &h);
            }
            None
        }
    })
    .await
    .ok()
    .flatten();
    let Some((u, token)) = opened else {
        info!(user = %user.chars().take(64).collect::<String>(), %addr, "failed sign-in");
        return retry(StatusCode::UNAUTHORIZED, "Wrong user name or password.");
    };
    app.limit.succeeded(addr, user);
    // The services list's figures, fetched now so that the first list need not wait.
    let warm = crate::api::Api::new(&app.settings.servers[0], &token);
    let figures = app.figures.clone();
    tokio::spawn(async move {
        let _ = figures.get(warm).await;
    });
    let id = app.sessions.create(&u.name, u.role, token);
    info!(user = %u.name, role = u.role.as_str(), %addr, "signed in");
    let mut resp = http::redirect(&next);
    resp.headers_mut().append(
        header::SET_COOKIE,
        http::cookie(app, SESSION_COOKIE, &id, None),
    );
    resp.headers_mut().append(
        header::SET_COOKIE,
        http::cookie(app, PRE_COOKIE, "", Some(0)),
    );
    resp
}

#[cfg(test)]
mod tests {
    #[test]
    fn next_is_a_local_path() {
        assert_eq!(super::next_path("/services"), "/services");
        assert_eq!(super::next_path("//evil.example"), "/");
        assert_eq!(super::next_path("https://evil.example"), "/");
        assert_eq!(super::next_path("/\\evil"), "/");
        assert_eq!(super::next_path("/\t/evil.example"), "/");
        assert_eq!(super::next_path("/ok?x=1"), "/ok?x=1");
    }
}
