//! Security: the security definitions channels name (HTTP Basic, API key, JWT), the secrets
//! services read, and the admin API's tokens. Secret material goes in and never comes out:
//! the API answers no password, key, HMAC secret, secret value or token (but a new token,
//! once), and no page shows one or fills one back into a form. Changes are an admin's; the
//! token list as well (the API needs admin to read it). A token named `dashboard.*` is a
//! dashboard user's: it is shown as such and removed with `oxbus dashboard user remove`.

use hyper::{Method, StatusCode};
use maud::{Markup, html};
use serde_json::{Map, Value, json};
use std::sync::Arc;

use super::{Flash, api, back, csrf, flash, ok_page, when};
use crate::App;
use crate::api::enc;
use crate::http::{Req, Resp, field, need};
use crate::session::Session;
use crate::users::{Role, TOKEN_PREFIX};

/// The pages of this file: `None` when `segs` (the request's path, decoded) is not one of
/// them. GETs only read; every change is a POST.
pub async fn route(app: &Arc<App>, r: &Req, s: &Arc<Session>, segs: &[&str]) -> Option<Resp> {
    let get = r.method == Method::GET;
    let post = r.method == Method::POST;
    Some(match segs {
        ["security"] if get => definitions(app, s).await,
        ["security"] if post => create_definition(app, r, s).await,
        ["security", "new"] if get => new_definition(r, s),
        ["security", name, "delete"] if post => delete_definition(app, s, name).await,
        ["secrets"] if get => secrets(app, s).await,
        ["secrets"] if post => set_secret(app, r, s).await,
        ["secrets", name, "delete"] if post => delete_secret(app, s, name).await,
        ["tokens"] if get => tokens(app, s).await,
        ["tokens"] if post => create_token(app, r, s).await,
        ["tokens", name, "revoke"] if post => revoke_token(app, s, name).await,
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------
// Forms: one field's markup, and which field a refusal names.

/// How a form field is entered.
enum Input {
    Text,
    /// A number, as text (a browser sends nothing for a number input that holds no number,
    /// and the refusal would then name nothing).
    Number,
    /// Secret material: a password input, never filled in.
    Secret,
    /// Several lines (a PEM public key).
    Lines,
    /// One of (value, label).
    Select(&'static [(&'static str, &'static str)]),
    /// A checkbox whose value is `1`.
    Check,
}

/// A form field: its name (the API's member where there is one), label, hint, input.
struct Field {
    name: &'static str,
    label: &'static str,
    hint: &'static str,
    input: Input,
}

const fn input_field(
    name: &'static str,
    label: &'static str,
    hint: &'static str,
    input: Input,
) -> Field {
    Field {
        name,
        label,
        hint,
        input,
    }
}

/// One field: its label, its input (`value` filled in, unless secret), and `error` under it
/// when the refusal names it (`at`).
fn form_field(fd: &Field, values: &[(String, String)], at: Option<&str>, error: &str) -> Markup {
    let id = format!("f-{}", fd.name);
    let value = field(values, fd.name);
    let bad = at == Some(fd.name);
    let invalid = bad.then_some("true");
    let described = bad.then_some("field-error");
    let label = html! {
        label for=(id) {
            (fd.label)
            @if !fd.hint.is_empty() { " " span.muted { "(" (fd.hint) ")" } }
        }
    };
    let message = html! {
        @if bad { div.field-error id="field-error" { (error) } }
    };
    html! {
        @match &fd.input {
            Input::Check => {
                div.check {
                    input type="checkbox" id=(id) name=(fd.name) value="1" checked[value == "1"]
                        aria-invalid=[invalid] aria-describedby=[described];
                    " " (label)
                    (message)
                }
            }
            other => {
                div {
                    (label)
                    @match other {
                        Input::Secret => {
                            input type="password" id=(id) name=(fd.name)
                                autocomplete="new-password" spellcheck="false"
                                aria-invalid=[invalid] aria-describedby=[described];
                        }
                        Input::Lines => {
                            textarea.code id=(id) name=(fd.name) rows="6" spellcheck="false"
                                aria-invalid=[invalid] aria-describedby=[described] { (value) }
                        }
                        Input::Number => {
                            input type="text" inputmode="numeric" id=(id) name=(fd.name)
                                value=(value) autocomplete="off"
                                aria-invalid=[invalid] aria-describedby=[described];
                        }
                        Input::Select(options) => {
                            select id=(id) name=(fd.name)
                                aria-invalid=[invalid] aria-describedby=[described] {
                                @for (v, l) in options.iter() { option value=(v) selected[value == *v] { (l) } }
                            }
                        }
                        _ => {
                            input type="text" id=(id) name=(fd.name) value=(value) autocomplete="off"
                                spellcheck="false" aria-invalid=[invalid] aria-describedby=[described];
                        }
                    }
                    (message)
                }
            }
        }
    }
}

/// The form field a refusal's message names: the first of `words` — (a word of the
/// message, the form field it means), in order of preference — found as a whole word in
/// `message` once its quoted values and the object's own name (`own`, which could be any
/// word) are taken out.
fn field_named(message: &str, own: &str, words: &[(&str, &'static str)]) -> Option<&'static str> {
    let mut unquoted = String::with_capacity(message.len());
    let mut quoted = false;
    for c in message.chars() {
        if c == '"' {
            quoted = !quoted;
            unquoted.push(' ');
        } else if !quoted {
            unquoted.push(c);
        }
    }
    // The name once: a message names its object once, and a name may be a field's word
    // (a definition named `key` that "needs a key").
    let mut own_seen = own.is_empty();
    let found: Vec<&str> = unquoted
        .split_whitespace()
        .filter(|t| {
            let is_own = !own_seen && t.trim_matches(|c: char| ",.:;()'`".contains(c)) == own;
            own_seen |= is_own;
            !is_own
        })
        .flat_map(|t| t.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
        .filter(|w| !w.is_empty())
        .collect();
    words
        .iter()
        .find(|(w, _)| found.contains(w))
        .map(|(_, f)| *f)
}

/// Comma- or space-separated items, without the empty ones.
fn items(s: &str) -> Vec<String> {
    s.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|x| !x.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A refused form's page: 400.
fn refused_page(s: &Session, current: &str, title: &str, body: Markup) -> Resp {
    crate::http::html(
        StatusCode::BAD_REQUEST,
        super::page(s, current, title, body),
    )
}

// ---------------------------------------------------------------------------------------
// Security definitions.

/// The types of definition: (type, name, what it checks).
const KINDS: &[(&str, &str, &str)] = &[
    (
        "basic",
        "HTTP Basic",
        "The caller sends Authorization: Basic with this one user name and password. The \
         password is stored as an argon2id hash, sealed.",
    ),
    (
        "apikey",
        "API key",
        "The caller sends the key in a request header. The key is stored sealed.",
    ),
    (
        "jwt",
        "JWT bearer",
        "The caller sends Authorization: Bearer with a JWT: HS* algorithms check it with a \
         shared secret (stored sealed), RS*/PS*/ES*/EdDSA with a public key (PEM) or a JWKS \
         file on the servers.",
    ),
];

const NAME: Field = input_field(
    "name",
    "Name",
    "letters, digits, ._- ; channels name it",
    Input::Text,
);

const BASIC: &[Field] = &[
    input_field(
        "username",
        "User name",
        "the one user name accepted; no ':'",
        Input::Text,
    ),
    input_field(
        "password",
        "Password",
        "stored hashed and sealed; never shown again",
        Input::Secret,
    ),
    input_field(
        "realm",
        "Realm",
        "optional; the challenge's realm, oxbus when empty",
        Input::Text,
    ),
];

const APIKEY: &[Field] = &[
    input_field(
        "header",
        "Header",
        "optional; X-API-Key when empty",
        Input::Text,
    ),
    input_field(
        "key",
        "Key",
        "stored sealed; never shown again",
        Input::Secret,
    ),
];

const JWT: &[Field] = &[
    input_field(
        "algorithms",
        "Algorithms",
        "comma-separated, one family: HS256/384/512, RS*, PS*, ES256/384 or EdDSA",
        Input::Text,
    ),
    input_field(
        "secret",
        "Shared secret",
        "HS* only; stored sealed; never shown again",
        Input::Secret,
    ),
    input_field(
        "public_key",
        "Public key (PEM)",
        "RS*/PS*/ES*/EdDSA: this or a JWKS file",
        Input::Lines,
    ),
    input_field(
        "jwks_file",
        "JWKS file",
        "RS*/PS*/ES*/EdDSA: a path on the servers",
        Input::Text,
    ),
    input_field(
        "issuer",
        "Issuer",
        "optional: the iss required",
        Input::Text,
    ),
    input_field(
        "audience",
        "Audience",
        "optional: the aud required",
        Input::Text,
    ),
    input_field(
        "leeway_s",
        "Clock leeway, seconds",
        "optional; 0 when empty",
        Input::Number,
    ),
];

const RATE: &[Field] = &[
    input_field("rate_requests", "Requests", "optional", Input::Number),
    input_field(
        "rate_per_s",
        "Per seconds",
        "optional; 1 when empty",
        Input::Number,
    ),
    input_field(
        "rate_burst",
        "Burst",
        "optional; the requests when empty",
        Input::Number,
    ),
];

/// The fields of a definition of type `kind`, besides the name and the rate limit.
fn kind_fields(kind: &str) -> &'static [Field] {
    match kind {
        "apikey" => APIKEY,
        "jwt" => JWT,
        _ => BASIC,
    }
}

/// The words of the servers' refusals of a definition and the field each means, the most
/// telling first (`edge::gate`'s and `model::security`'s messages).
const DEFINITION_WORDS: &[(&str, &str)] = &[
    ("username", "username"),
    ("realm", "realm"),
    ("header", "header"),
    ("algorithms", "algorithms"),
    ("algorithm", "algorithms"),
    ("secret", "secret"),
    ("public_key", "public_key"),
    ("jwks_file", "jwks_file"),
    ("issuer", "issuer"),
    ("audience", "audience"),
    ("leeway_s", "leeway_s"),
    ("password", "password"),
    ("key", "key"),
    ("rate_limit", "rate_requests"),
    ("name", "name"),
    ("named", "name"),
];

/// The API's JSON for the new definition form (`POST /v1/security`): the name, the type,
/// the members of that type only (the plaintext `password` / `key` / `secret` among them
/// when given) and the rate limit; or what is wrong, naming the member.
fn definition_json(f: &[(String, String)]) -> Result<Value, String> {
    let kind = field(f, "type");
    if !KINDS.iter().any(|(k, _, _)| *k == kind) {
        return Err(format!(
            "type must be basic, apikey or jwt, not {kind:.40?}"
        ));
    }
    let mut o = Map::new();
    let text = |k: &str| field(f, k).trim().to_owned();
    let name = text("name");
    if !name.is_empty() {
        o.insert("name".into(), json!(name));
    }
    o.insert("type".into(), json!(kind));
    for fd in kind_fields(kind) {
        match fd.input {
            // Secret material as typed: spaces may be part of it.
            Input::Secret => {
                let v = field(f, fd.name);
                if !v.is_empty() {
                    o.insert(fd.name.into(), json!(v));
                }
            }
            Input::Number => {
                let v = text(fd.name);
                if !v.is_empty() {
                    let n: u64 = v.parse().map_err(|_| {
                        format!(
                            "{} must be a whole number of seconds, not {v:.40?}",
                            fd.name
                        )
                    })?;
                    o.insert(fd.name.into(), json!(n));
                }
            }
            _ if fd.name == "algorithms" => {
                let list = items(&text(fd.name));
                if !list.is_empty() {
                    o.insert(fd.name.into(), json!(list));
                }
            }
            _ => {
                let v = text(fd.name);
                if !v.is_empty() {
                    o.insert(fd.name.into(), json!(v));
                }
            }
        }
    }
    if let Some(limit) = rate_limit(f)? {
        o.insert("rate_limit".into(), limit);
    }
    Ok(Value::Object(o))
}

/// The `rate_limit` of the form's rate fields: none when all are empty.
fn rate_limit(f: &[(String, String)]) -> Result<Option<Value>, String> {
    let get = |k: &str| field(f, k).trim().to_owned();
    let (req, per, burst) = (get("rate_requests"), get("rate_per_s"), get("rate_burst"));
    if req.is_empty() && per.is_empty() && burst.is_empty() {
        return Ok(None);
    }
    let n = |v: &str, what: &str| {
        v.parse::<u32>()
            .map_err(|_| format!("rate_limit: {what} must be a whole number, not {v:.40?}"))
    };
    if req.is_empty() {
        return Err("rate_limit: give the requests (or leave every rate field empty)".into());
    }
    let mut limit = json!({
        "requests": n(&req, "requests")?,
        "per_s": if per.is_empty() { 1 } else { n(&per, "per seconds")? },
    });
    if !burst.is_empty() {
        limit["burst"] = json!(n(&burst, "burst")?);
    }
    Ok(Some(limit))
}

/// A rate limit as people read it.
fn rate_text(l: &Value) -> String {
    let mut t = format!("{} per {} s", l["requests"], l["per_s"]);
    if let Some(b) = l["burst"].as_u64() {
        t.push_str(&format!(", bursts of {b}"));
    }
    t
}

/// GET /security: every definition with its non-secret members, whether it holds secret
/// material, its rate limit and the channels that name it; delete (admin).
async fn definitions(app: &Arc<App>, s: &Arc<Session>) -> Resp {
    let title = "Security definitions";
    let a = api(app, s);
    let (defs, channels) = tokio::join!(a.get("/v1/security"), a.get("/v1/channels"));
    let defs = match defs {
        Ok(v) => v,
        Err(e) => return super::failed(s, "/security", title, &e),
    };
    // The channels that name each definition; none known when the list did not come.
    let channels = channels
        .ok()
        .and_then(|c| c["channels"].as_array().cloned());
    let admin = s.role.allows(Role::Admin);
    let body = html! {
        (flash(&Flash::take(s)))
        p { "A REST channel that names a definition lets in only the callers it accepts. \
             Passwords, keys and shared secrets are stored sealed: the servers never show them \
             again." }
        @if admin { div.toolbar { a.button href="/security/new" { "New definition" } } }
        table {
            thead { tr {
                th scope="col" { "Name" } th scope="col" { "Type" } th scope="col" { "Settings" }
                th scope="col" { "Secret" } th scope="col" { "Rate limit" } th scope="col" { "Channels" }
                @if admin { th scope="col" { span.visually-hidden { "Actions" } } }
            } }
            tbody {
                @for d in defs["security"].as_array().cloned().unwrap_or_default() {
                    @let name = d["name"].as_str().unwrap_or("?").to_owned();
                    @let kind = d["type"].as_str().unwrap_or("?");
                    @let users: Option<Vec<String>> = channels.as_ref().map(|list| list.iter()
                        .filter(|c| c["security"].as_str() == Some(name.as_str()))
                        .map(|c| c["name"].as_str().or(c["url_path"].as_str()).unwrap_or("?").to_owned())
                        .collect());
                    tr {
                        td { code { (name) } }
                        td { (KINDS.iter().find(|(k, _, _)| *k == kind).map_or(kind, |(_, n, _)| *n)) }
                        td { (settings(&d)) }
                        td {
                            @if d["has_secret"] == true { "stored, sealed" }
                            @else { span.muted { "none" } }
                        }
                        td { @if d["rate_limit"].is_object() { (rate_text(&d["rate_limit"])) } @else { span.muted { "–" } } }
                        td {
                            @match users {
                                None => { span.muted { "unknown" } }
                                Some(u) if u.is_empty() => { span.muted { "none" } }
                                Some(u) => { (u.join(", ")) }
                            }
                        }
                        @if admin {
                            td {
                                @if crate::api::dot_segment(&name) {
                                    span.muted { "(with the CLI)" }
                                } @else {
                                form.inline method="post" action=(format!("/security/{}/delete", enc(&name))) {
                                    (csrf(s))
                                    button.danger type="submit" aria-label=(format!("Delete security definition {name}")) { "Delete" }
                                }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if defs["security"].as_array().is_none_or(Vec::is_empty) { p { "No security definition." } }
    };
    ok_page(s, "/security", title, body)
}

/// A definition's members other than its name, type, secret flag and rate limit, as the
/// API answers them (it answers no secret material), and the defaults that apply.
fn settings(d: &Value) -> Markup {
    let shown = ["name", "type", "has_secret", "rate_limit"];
    let members: Vec<(&String, &Value)> = d
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, _)| !shown.contains(&k.as_str()))
                .collect()
        })
        .unwrap_or_default();
    let default = match d["type"].as_str() {
        Some("apikey") if d.get("header").is_none() => Some(("header", "X-API-Key (the default)")),
        Some("basic") if d.get("realm").is_none() => Some(("realm", "oxbus (the default)")),
        _ => None,
    };
    html! {
        ul.plain {
            @for (k, v) in &members {
                li {
                    span.muted { (k) ": " }
                    @match v {
                        Value::String(t) if k.as_str() == "public_key" => {
                            details {
                                summary { "PEM" }
                                pre { code { (t) } }
                            }
                        }
                        Value::String(t) => { code { (t) } }
                        Value::Array(list) => {
                            (list.iter().map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned)).collect::<Vec<_>>().join(", "))
                        }
                        other => { (other.to_string()) }
                    }
                }
            }
            @if let Some((k, v)) = default { li { span.muted { (k) ": " } (v) } }
        }
    }
}

/// The new definition form for type `kind`: a link per type (no script: the type is chosen
/// by a link to its own form), its fields filled in from `values` but for secret material,
/// and the refusal `error` next to the field it names.
fn new_definition_markup(
    s: &Session,
    kind: &str,
    values: &[(String, String)],
    error: Option<&str>,
) -> Markup {
    let fields = kind_fields(kind);
    let words: Vec<(&str, &'static str)> = DEFINITION_WORDS
        .iter()
        .copied()
        .filter(|(_, f)| {
            *f == "name" || f.starts_with("rate_") || fields.iter().any(|x| x.name == *f)
        })
        .collect();
    let at = error.and_then(|e| field_named(e, field(values, "name").trim(), &words));
    let e = error.unwrap_or("");
    html! {
        nav.tabs aria-label="Type of definition" {
            ul {
                @for (k, n, _) in KINDS {
                    li {
                        @if *k == kind {
                            a href=(format!("/security/new?type={k}")) aria-current="page" { (n) }
                        } @else {
                            a href=(format!("/security/new?type={k}")) { (n) }
                        }
                    }
                }
            }
        }
        p { (KINDS.iter().find(|(k, _, _)| *k == kind).map_or("", |(_, _, d)| *d)) }
        @if let Some(e) = error {
            div.flash.error role="alert" id="form-error" { "Not created: " (e) }
        }
        form.stack method="post" action="/security" novalidate {
            (csrf(s))
            input type="hidden" name="type" value=(kind);
            (form_field(&NAME, values, at, e))
            @for fd in fields { (form_field(fd, values, at, e)) }
            fieldset {
                legend { "Rate limit over every channel that names it (optional)" }
                @for fd in RATE { (form_field(fd, values, at, e)) }
            }
            div { button type="submit" { "Create" } }
        }
        p { a href="/security" { "Back to the security definitions" } }
    }
}

/// GET /security/new?type=basic|apikey|jwt (admin)
fn new_definition(r: &Req, s: &Arc<Session>) -> Resp {
    if let Some(resp) = need(s, Role::Admin) {
        return resp;
    }
    let kind = r
        .q("type")
        .filter(|t| KINDS.iter().any(|(k, _, _)| k == t))
        .unwrap_or("basic");
    ok_page(
        s,
        "/security",
        "New security definition",
        new_definition_markup(s, kind, &[], None),
    )
}

/// POST /security (admin): `POST /v1/security`; refused, the form again with the message
/// next to the field it names (secret material not filled back in).
async fn create_definition(app: &Arc<App>, r: &Req, s: &Arc<Session>) -> Resp {
    if let Some(resp) = need(s, Role::Admin) {
        return resp;
    }
    let f = r.form();
    let kind = field(&f, "type");
    let kind = if KINDS.iter().any(|(k, _, _)| *k == kind) {
        kind
    } else {
        "basic"
    };
    let refused = |msg: &str| {
        refused_page(
            s,
            "/security",
            "New security definition",
            new_definition_markup(s, kind, &f, Some(msg)),
        )
    };
    let doc = match definition_json(&f) {
        Ok(d) => d,
        Err(m) => return refused(&m),
    };
    match api(app, s).send("POST", "/v1/security", &doc).await {
        Ok(v) => back(
            s,
            "/security",
            Ok(format!(
                "Security definition {} created.",
                v["security"]["name"]
                    .as_str()
                    .or(doc["name"].as_str())
                    .unwrap_or("")
            )),
        ),
        Err(e) if e.status == Some(401) => {
            super::failed(s, "/security", "New security definition", &e)
        }
        Err(e) => refused(&e.message),
    }
}

/// POST /security/{name}/delete (admin): `DELETE /v1/security/{name}` (refused while a
/// channel names it).
async fn delete_definition(app: &Arc<App>, s: &Arc<Session>, name: &str) -> Resp {
    if let Some(resp) = need(s, Role::Admin) {
        return resp;
    }
    match api(app, s)
        .send(
            "DELETE",
            &format!("/v1/security/{}", enc(name)),
            &Value::Null,
        )
        .await
    {
        Ok(_) => back(
            s,
            "/security",
            Ok(format!("Security definition {name} deleted.")),
        ),
        Err(e) => back(
            s,
            "/security",
            Err(format!("Security definition {name} not deleted: {e}")),
        ),
    }
}

// ---------------------------------------------------------------------------------------
// Secrets.

const SECRET_FIELDS: &[Field] = &[
    input_field("name", "Name", "letters, digits, ._-/:@", Input::Text),
    input_field(
        "value",
        "Value",
        "empty: keep the stored value and change the readers only",
        Input::Secret,
    ),
    input_field(
        "services",
        "Readers",
        "the services that may read it, comma-separated names or patterns such as crm.*; \
         empty: keep the stored readers (none for a new secret)",
        Input::Text,
    ),
    input_field("services_none", "No service may read it", "", Input::Check),
];

const SECRET_WORDS: &[(&str, &str)] = &[
    ("services", "services"),
    ("value", "value"),
    ("name", "name"),
    ("named", "name"),
];

/// The secret's name and the API's body for the set form (`PUT /v1/secrets/{name}`): the
/// value when one is typed (as it is typed), the readers when listed or cleared; or what is
/// wrong, naming the member.
fn secret_json(f: &[(String, String)]) -> Result<(String, Value), String> {
    let name = field(f, "name").trim().to_owned();
    if name.is_empty() {
        return Err("name: give the secret's name".into());
    }
    let mut o = Map::new();
    let value = field(f, "value");
    if !value.is_empty() {
        o.insert("value".into(), json!(value));
    }
    let readers = items(field(f, "services"));
    let none = field(f, "services_none") == "1";
    if none && !readers.is_empty() {
        return Err(
            "services: list the services that may read it, or tick that none may, not both".into(),
        );
    }
    if none || !readers.is_empty() {
        o.insert("services".into(), json!(readers));
    }
    if o.is_empty() {
        return Err("value: give a value, the readers, or both".into());
    }
    Ok((name, Value::Object(o)))
}

/// GET /secrets: the page as it is.
async fn secrets(app: &Arc<App>, s: &Arc<Session>) -> Resp {
    secrets_page(app, s, &[], None).await
}

/// The secrets page: every secret's name, readers, who set it and when (the API answers no
/// value); for an admin the set form, with `values` and the refusal `error` if it was
/// refused (400), and a delete button per secret.
async fn secrets_page(
    app: &Arc<App>,
    s: &Arc<Session>,
    values: &[(String, String)],
    error: Option<&str>,
) -> Resp {
    let title = "Secrets";
    let list = match api(app, s).get("/v1/secrets").await {
        Ok(v) => v,
        Err(e) => return super::failed(s, "/secrets", title, &e),
    };
    let admin = s.role.allows(Role::Admin);
    let at = error.and_then(|e| field_named(e, field(values, "name").trim(), SECRET_WORDS));
    let e = error.unwrap_or("");
    let body = html! {
        (flash(&Flash::take(s)))
        p { "Services read a secret with " code { "self.secrets['name']" } " when its readers name \
             them. A value is stored sealed and goes in only: neither the servers nor this page \
             ever show it." }
        table {
            thead { tr {
                th scope="col" { "Name" } th scope="col" { "Readers" }
                th scope="col" { "Set by" } th scope="col" { "Set (UTC)" }
                @if admin { th scope="col" { span.visually-hidden { "Actions" } } }
            } }
            tbody {
                @for x in list["secrets"].as_array().cloned().unwrap_or_default() {
                    @let name = x["name"].as_str().unwrap_or("?").to_owned();
                    @let readers: Vec<&str> = x["services"].as_array().map(|l| l.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
                    tr {
                        td { code { (name) } }
                        td {
                            @if readers.is_empty() { span.muted { "no service" } }
                            @else { @for (i, p) in readers.iter().enumerate() { @if i > 0 { ", " } code { (p) } } }
                        }
                        td { (x["updated_by"].as_str().unwrap_or("")) }
                        td { @match x["updated_at_ms"].as_i64() { Some(t) => (when(t)), None => span.muted { "–" } } }
                        @if admin {
                            td {
                                @if crate::api::dot_segment(&name) {
                                    span.muted { "(with the CLI)" }
                                } @else {
                                form.inline method="post" action=(format!("/secrets/{}/delete", enc(&name))) {
                                    (csrf(s))
                                    button.danger type="submit" aria-label=(format!("Delete secret {name}")) { "Delete" }
                                }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if list["secrets"].as_array().is_none_or(Vec::is_empty) { p { "No secret." } }
        @if admin {
            h2 id="set" { "Set a secret" }
            p.muted { "A new secret, a new value for one, or new readers." }
            @if let Some(e) = error {
                div.flash.error role="alert" id="form-error" { "Not set: " (e) }
            }
            form.stack method="post" action="/secrets" novalidate {
                (csrf(s))
                @for fd in SECRET_FIELDS { (form_field(fd, values, at, e)) }
                div { button type="submit" { "Set" } }
            }
        }
    };
    let status = if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    crate::http::html(status, super::page(s, "/secrets", title, body))
}

/// POST /secrets (admin): `PUT /v1/secrets/{name}`; refused, the page again with the
/// message next to the field it names (the value not filled back in).
async fn set_secret(app: &Arc<App>, r: &Req, s: &Arc<Session>) -> Resp {
    if let Some(resp) = need(s, Role::Admin) {
        return resp;
    }
    let f = r.form();
    let (name, doc) = match secret_json(&f) {
        Ok(x) => x,
        Err(m) => return secrets_page(app, s, &f, Some(&m)).await,
    };
    match api(app, s)
        .send("PUT", &format!("/v1/secrets/{}", enc(&name)), &doc)
        .await
    {
        Ok(v) => back(
            s,
            "/secrets",
            Ok(if v["created"] == true {
                format!("Secret {name} created.")
            } else {
                format!("Secret {name} updated.")
            }),
        ),
        Err(e) if e.status == Some(401) => super::failed(s, "/secrets", "Secrets", &e),
        Err(e) => secrets_page(app, s, &f, Some(&e.message)).await,
    }
}

/// POST /secrets/{name}/delete (admin): `DELETE /v1/secrets/{name}`.
async fn delete_secret(app: &Arc<App>, s: &Arc<Session>, name: &str) -> Resp {
    if let Some(resp) = need(s, Role::Admin) {
        return resp;
    }
    match api(app, s)
        .send(
            "DELETE",
            &format!("/v1/secrets/{}", enc(name)),
            &Value::Null,
        )
        .await
    {
        Ok(_) => back(s, "/secrets", Ok(format!("Secret {name} deleted."))),
        Err(e) => back(
            s,
            "/secrets",
            Err(format!("Secret {name} not deleted: {e}")),
        ),
    }
}

// ---------------------------------------------------------------------------------------
// API tokens.

const ROLES: &[(&str, &str)] = &[
    ("viewer", "viewer: reads everything but secret material"),
    ("deployer", "deployer: also deploys, invokes, runs jobs"),
    ("admin", "admin: everything"),
];

const TOKEN_FIELDS: &[Field] = &[
    input_field(
        "name",
        "Name",
        "letters, digits, ._- ; e.g. ci",
        Input::Text,
    ),
    input_field("role", "Role", "", Input::Select(ROLES)),
];

const TOKEN_WORDS: &[(&str, &str)] = &[("role", "role"), ("name", "name"), ("named", "name")];

/// The API's body for the new token form (`POST /v1/tokens`), or what is wrong, naming the
/// member. A name starting with `dashboard.` is refused here: such tokens are the dashboard
/// users' (`oxbus dashboard user add`).
fn token_json(f: &[(String, String)]) -> Result<Value, String> {
    let name = field(f, "name").trim();
    let role = field(f, "role");
    if name.is_empty() {
        return Err("name: give the token a name".into());
    }
    if name.starts_with(TOKEN_PREFIX) {
        return Err(format!(
            "names starting with {TOKEN_PREFIX} are the dashboard users' tokens: add a user with \
             `oxbus dashboard user add` instead"
        ));
    }
    if !ROLES.iter().any(|(r, _)| *r == role) {
        return Err(format!(
            "role {role:.40?} is not a role: admin, deployer or viewer"
        ));
    }
    Ok(json!({"name": name, "role": role}))
}

/// The dashboard user a token belongs to, for a `dashboard.*` token.
fn dashboard_user(token: &str) -> Option<&str> {
    token.strip_prefix(TOKEN_PREFIX)
}

/// GET /tokens (admin: the API lists tokens to admins only).
async fn tokens(app: &Arc<App>, s: &Arc<Session>) -> Resp {
    if let Some(resp) = need(s, Role::Admin) {
        return resp;
    }
    tokens_page(app, s, &[], None).await
}

/// The API tokens page: every token's name, role, who made it and when, its last use
/// (never the token); revoke, but for a dashboard user's; the new token form, with
/// `values` and the refusal `error` if it was refused (400).
async fn tokens_page(
    app: &Arc<App>,
    s: &Arc<Session>,
    values: &[(String, String)],
    error: Option<&str>,
) -> Resp {
    let title = "API tokens";
    let list = match api(app, s).get("/v1/tokens").await {
        Ok(v) => v,
        Err(e) => return super::failed(s, "/tokens", title, &e),
    };
    let at = error.and_then(|e| field_named(e, field(values, "name").trim(), TOKEN_WORDS));
    let e = error.unwrap_or("");
    let mine = format!("{TOKEN_PREFIX}{}", s.user);
    let body = html! {
        (flash(&Flash::take(s)))
        p { "Each token is an identity of the admin API with a role; the servers keep only its \
             hash, and the audit log names it. The admin token file (" code { "root" } ") is not listed." }
        table {
            thead { tr {
                th scope="col" { "Name" } th scope="col" { "Role" } th scope="col" { "Created by" }
                th scope="col" { "Created (UTC)" } th scope="col" { "Last used (UTC)" }
                th scope="col" { span.visually-hidden { "Actions" } }
            } }
            tbody {
                @for t in list["tokens"].as_array().cloned().unwrap_or_default() {
                    @let name = t["name"].as_str().unwrap_or("?").to_owned();
                    tr {
                        td {
                            code { (name) }
                            @if let Some(u) = dashboard_user(&name) {
                                br;
                                span.muted { "dashboard user " (u) @if name == mine { " (you)" } }
                            }
                        }
                        td { (t["role"].as_str().unwrap_or("?")) }
                        td { (t["created_by"].as_str().unwrap_or("")) }
                        td { @match t["created_at_ms"].as_i64() { Some(x) => (when(x)), None => span.muted { "–" } } }
                        td { @match t["last_used_at_ms"].as_i64() { Some(x) => (when(x)), None => span.muted { "never" } } }
                        td {
                            @if let Some(u) = dashboard_user(&name) {
                                span.muted { "removed with " code { "oxbus dashboard user remove " (u) } }
                            } @else {
                                form.inline method="post" action=(format!("/tokens/{}/revoke", enc(&name))) {
                                    (csrf(s))
                                    button.danger type="submit" aria-label=(format!("Revoke token {name}")) { "Revoke" }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if list["tokens"].as_array().is_none_or(Vec::is_empty) { p { "No API token." } }
        h2 id="new" { "New token" }
        p.muted { "The token is shown once, on the next page." }
        @if let Some(e) = error {
            div.flash.error role="alert" id="form-error" { "Not created: " (e) }
        }
        form.stack method="post" action="/tokens" novalidate {
            (csrf(s))
            @for fd in TOKEN_FIELDS { (form_field(fd, values, at, e)) }
            div { button type="submit" { "Create token" } }
        }
    };
    let status = if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    crate::http::html(status, super::page(s, "/tokens", title, body))
}

/// POST /tokens (admin): `POST /v1/tokens`; the answer page shows the new token, this once
/// (it is in no redirect, session or log); refused, the page again with the message next
/// to the field it names.
async fn create_token(app: &Arc<App>, r: &Req, s: &Arc<Session>) -> Resp {
    if let Some(resp) = need(s, Role::Admin) {
        return resp;
    }
    let f = r.form();
    let doc = match token_json(&f) {
        Ok(d) => d,
        Err(m) => return tokens_page(app, s, &f, Some(&m)).await,
    };
    let v = match api(app, s).send("POST", "/v1/tokens", &doc).await {
        Ok(v) => v,
        Err(e) if e.status == Some(401) => return super::failed(s, "/tokens", "API tokens", &e),
        Err(e) => return tokens_page(app, s, &f, Some(&e.message)).await,
    };
    let name = v["name"].as_str().unwrap_or("");
    let token = v["token"].as_str().unwrap_or("");
    let body = html! {
        div.flash.ok role="status" id="token-note" {
            "Token " code { (name) } " created with role " (v["role"].as_str().unwrap_or("?")) ". "
            strong { "Copy it now: it will not be shown again." }
            " The servers keep only its hash; a lost token is revoked and replaced."
        }
        div.new-token {
            label for="new-token" { "The new token" }
            input.token type="text" id="new-token" value=(token) readonly autocomplete="off"
                spellcheck="false" aria-describedby="token-note";
        }
        p { "Send it as " code { "Authorization: Bearer <token>" } ", or to the CLI as "
            code { "OXBUS_TOKEN" } " with " code { "--server" } "." }
        p { a href="/tokens" { "Back to the API tokens" } }
    };
    ok_page(s, "/tokens", "New API token", body)
}

/// POST /tokens/{name}/revoke (admin): `DELETE /v1/tokens/{name}`; a dashboard user's token
/// is refused here (`oxbus dashboard user remove` revokes it and drops the user).
async fn revoke_token(app: &Arc<App>, s: &Arc<Session>, name: &str) -> Resp {
    if let Some(resp) = need(s, Role::Admin) {
        return resp;
    }
    if let Some(u) = dashboard_user(name) {
        return back(
            s,
            "/tokens",
            Err(format!(
                "Token {name} is dashboard user {u}'s: remove the user with `oxbus dashboard user \
                 remove {u}` (which revokes it)."
            )),
        );
    }
    match api(app, s)
        .send("DELETE", &format!("/v1/tokens/{}", enc(name)), &Value::Null)
        .await
    {
        Ok(_) => back(s, "/tokens", Ok(format!("Token {name} revoked."))),
        Err(e) => back(s, "/tokens", Err(format!("Token {name} not revoked: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::form_pairs as f;

    #[test]
    fn the_definition_form_becomes_the_apis_json() {
        let j = super::definition_json(&f(&[
            ("type", "basic"),
            ("name", " crm "),
            ("username", "crm-app"),
            ("password", " p w "),
            ("realm", ""),
            // Another type's member is not sent.
            ("key", "k"),
            ("rate_requests", "10"),
            ("rate_per_s", ""),
            ("rate_burst", "20"),
        ]))
        .unwrap();
        assert_eq!(
            j,
            json!({"name": "crm", "type": "basic", "username": "crm-app", "password": " p w ",
                "rate_limit": {"requests": 10, "per_s": 1, "burst": 20}})
        );
        let j = super::definition_json(&f(&[
            ("type", "jwt"),
            ("name", "idp"),
            ("algorithms", "RS256, PS256 EdDSA"),
            ("jwks_file", "/etc/oxbus/jwks.json"),
            ("leeway_s", "30"),
            ("secret", ""),
        ]))
        .unwrap();
        assert_eq!(
            j,
            json!({"name": "idp", "type": "jwt", "algorithms": ["RS256", "PS256", "EdDSA"],
                "jwks_file": "/etc/oxbus/jwks.json", "leeway_s": 30})
        );
        let j = super::definition_json(&f(&[("type", "apikey"), ("name", "p"), ("key", "k1")]))
            .unwrap();
        assert_eq!(j, json!({"name": "p", "type": "apikey", "key": "k1"}));
        let e = super::definition_json(&f(&[("type", "soap")])).unwrap_err();
        assert!(e.starts_with("type must be"), "{e}");
        let e = super::definition_json(&f(&[("type", "jwt"), ("leeway_s", "x")])).unwrap_err();
        assert!(e.starts_with("leeway_s"), "{e}");
        let e = super::definition_json(&f(&[("type", "basic"), ("rate_burst", "3")])).unwrap_err();
        assert!(e.starts_with("rate_limit"), "{e}");
    }

    #[test]
    fn a_refusal_is_shown_at_the_field_it_names() {
        let at = |m: &str, own: &str| super::field_named(m, own, super::DEFINITION_WORDS);
        assert_eq!(
            at("basic definition crm needs a password", "crm"),
            Some("password")
        );
        assert_eq!(at("apikey definition key needs a key", "key"), Some("key"));
        assert_eq!(
            at("apikey definition key needs a header", "key"),
            Some("header")
        );
        assert_eq!(
            at(
                "algorithm \"XX1\" of idp is not one of HS256/384/512",
                "idp"
            ),
            Some("algorithms")
        );
        assert_eq!(
            at(
                "jwt definition idp uses public keys: it takes public_key or jwks_file, not a secret",
                "idp"
            ),
            Some("secret")
        );
        assert_eq!(
            at(
                "jwt definition idp needs exactly one of public_key (PEM) or jwks_file",
                "idp"
            ),
            Some("public_key")
        );
        assert_eq!(
            at(
                "rate_limit needs requests, per_s (and burst, if given) above 0",
                ""
            ),
            Some("rate_requests")
        );
        assert_eq!(
            at(
                "\"bad password\" is not a valid security definition name (1-200 characters)",
                "bad password"
            ),
            Some("name")
        );
        assert_eq!(
            at("a security definition named crm exists already", "crm"),
            Some("name")
        );
        assert_eq!(at("the config store is unreachable", ""), None);
        let at = |m: &str| super::field_named(m, "s", super::SECRET_WORDS);
        assert_eq!(
            at("secret s: services: \"a b\" is not a service-name pattern"),
            Some("services")
        );
        assert_eq!(
            at("no secret named s (a new secret needs a value)"),
            Some("value")
        );
        let at = |m: &str| super::field_named(m, "x", super::TOKEN_WORDS);
        assert_eq!(
            at("a token named x exists already (revoke it first to replace it)"),
            Some("name")
        );
        assert_eq!(
            at("role \"boss\" is not a role: admin, deployer or viewer"),
            Some("role")
        );
    }

    #[test]
    fn the_secret_form_becomes_the_apis_json() {
        let (n, j) = super::secret_json(&f(&[
            ("name", " crm/api-key "),
            ("value", " v "),
            ("services", "crm.*, billing.get"),
        ]))
        .unwrap();
        assert_eq!(n, "crm/api-key");
        assert_eq!(
            j,
            json!({"value": " v ", "services": ["crm.*", "billing.get"]})
        );
        let (_, j) = super::secret_json(&f(&[("name", "a"), ("value", "v")])).unwrap();
        assert_eq!(j, json!({"value": "v"}));
        let (_, j) = super::secret_json(&f(&[("name", "a"), ("services_none", "1")])).unwrap();
        assert_eq!(j, json!({"services": []}));
        assert!(
            super::secret_json(&f(&[("name", "a")]))
                .unwrap_err()
                .starts_with("value")
        );
        assert!(
            super::secret_json(&f(&[("value", "v")]))
                .unwrap_err()
                .starts_with("name")
        );
        let e = super::secret_json(&f(&[
            ("name", "a"),
            ("services", "x"),
            ("services_none", "1"),
        ]))
        .unwrap_err();
        assert!(e.starts_with("services"), "{e}");
    }

    #[test]
    fn the_token_form_becomes_the_apis_json() {
        assert_eq!(
            super::token_json(&f(&[("name", " ci "), ("role", "deployer")])).unwrap(),
            json!({"name": "ci", "role": "deployer"})
        );
        assert!(super::token_json(&f(&[("name", "dashboard.bob"), ("role", "admin")])).is_err());
        assert!(
            super::token_json(&f(&[("name", "ci"), ("role", "root")]))
                .unwrap_err()
                .starts_with("role")
        );
        assert!(
            super::token_json(&f(&[("role", "viewer")]))
                .unwrap_err()
                .starts_with("name")
        );
        assert_eq!(super::dashboard_user("dashboard.alice"), Some("alice"));
        assert_eq!(super::dashboard_user("ci"), None);
    }
}
