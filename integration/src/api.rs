//! The admin API and the CLI as the tests drive them: a request with the server's own token
//! and a JSON body, an answer's body as text, the config version, a CLI run that must
//! succeed, and the CRUD of a JSON-defined object kind (`/v1/caches`, `/v1/jobs`...).
//!
//! Test code only: it asserts what the copies it replaces asserted, word for word, and it
//! starts nothing (servers come from [`crate::Env`]).

use crate::{Resp, Server, eventually};
use serde_json::Value;
use std::process::Output;
use std::time::Duration;

/// A request to `srv`'s admin API with its own token; `body` is sent as JSON
/// (`Value::Null`: no body).
pub async fn admin(srv: &Server, method: &str, path: &str, body: Value) -> Resp {
    let body = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    srv.admin(method, path, Some(&srv.admin_token()), &body)
        .await
}

/// An answer's body as text (lossy), for assertion messages.
pub fn text(r: &Resp) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// `srv`'s config version (`GET /v1/info`).
pub async fn config_version(srv: &Server) -> i64 {
    admin(srv, "GET", "/v1/info", Value::Null).await.json()["config_version"]
        .as_i64()
        .unwrap()
}

/// The standard output of a CLI run that must have succeeded.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A config export without its comment lines and its `config_version:` line: two exports
/// of the same definitions compare equal.
pub fn export_body(t: &str) -> String {
    t.lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("config_version:"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The objects of `kind` (`caches`, `jobs`: the collection under `/v1/` and the list's key
/// in its answer) that `srv` holds.
pub async fn list(srv: &Server, kind: &str) -> Vec<Value> {
    let r = admin(srv, "GET", &format!("/v1/{kind}"), Value::Null).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    r.json()[kind].as_array().unwrap().clone()
}

/// The names of the objects of `kind`, in the order `srv` lists them.
pub async fn names(srv: &Server, kind: &str) -> Vec<String> {
    list(srv, kind)
        .await
        .iter()
        .map(|o| o["name"].as_str().unwrap().to_owned())
        .collect()
}

/// PUT the definition of the `kind` object `name`; asserts the status.
pub async fn put(srv: &Server, kind: &str, name: &str, def: Value, status: u16) -> Value {
    let r = admin(srv, "PUT", &format!("/v1/{kind}/{name}"), def.clone()).await;
    assert_eq!(r.status, status, "PUT {name} {def}: {}", text(&r));
    r.json()
}

/// PUT `body` (sent as it is) as the `kind` object `name`: a 400 whose message contains
/// every one of `needles`; nothing is stored.
pub async fn refused(srv: &Server, kind: &str, name: &str, body: &str, needles: &[&str]) {
    let v = config_version(srv).await;
    let r = srv
        .admin(
            "PUT",
            &format!("/v1/{kind}/{name}"),
            Some(&srv.admin_token()),
            body.as_bytes(),
        )
        .await;
    assert_eq!(r.status, 400, "PUT {name} {body}: {}", text(&r));
    let msg = r.json()["error"].as_str().unwrap().to_owned();
    for n in needles {
        assert!(msg.contains(n), "PUT {name} {body}: {msg:?} lacks {n:?}");
    }
    assert_eq!(config_version(srv).await, v, "nothing stored");
}

/// Waits until `srv`'s `kind` object `name` (`what` names one in the wait's message:
/// `cache`, `job`) has `field` = `want` (`Value::Null`: no such object).
pub async fn has(srv: &Server, kind: &str, what: &str, name: &str, field: &str, want: Value) {
    eventually(
        Duration::from_secs(20),
        &format!("{what} {name}: {field} = {want}"),
        || async {
            let r = admin(srv, "GET", &format!("/v1/{kind}/{name}"), Value::Null).await;
            let got = if r.status == 404 {
                Value::Null
            } else {
                r.json()[field].clone()
            };
            (got == want).then_some(())
        },
    )
    .await;
}
