//! User config (docs/USER_CONFIG.md) against real servers and workers: the admin API's
//! create, get, list, replace and delete and what it refuses; the CLI from JSON, YAML and
//! TOML files; export and import (the document's `user_config`); the audit rows; the
//! workers' `user_config.get` op (read here over the low-level request API, independent of
//! the Python `self.user_config` wrapper), live after a change with no restart; and a
//! change through one server of a two-server cluster read by a service on the other.

use oxbus_integration::api::{admin, config_version, ok, text};
use oxbus_integration::*;
use serde_json::{Value, json};
use std::time::Duration;

/// A service that reads a user config through the bare `user_config.get` op (the payload's
/// `name`) and answers what the server replied: the REPLY meta's status, error and content
/// type, and the body as JSON.
const SERVICE: &str = r#"import json

from oxbus import Service


class Read(Service):
    name = 'uc.read'

    def handle(self):
        meta = json.dumps({'op': 'user_config.get', 'name': self.request.payload['name']})
        raw, body = self._require_dispatcher().request(meta.encode('utf-8'), b'')
        reply = json.loads(raw)
        self.response.payload = {
            'status': reply.get('status'),
            'error': reply.get('error'),
            'content_type': reply.get('content_type'),
            'body': json.loads(body),
        }
"#;

fn env() -> Env {
    Env::new()
        .workers(2)
        .service("ucsvc.py", SERVICE)
        .channel("/uc", &["POST"], "uc.read")
}

/// What `uc.read` answers for `name` on `srv`.
async fn read(srv: &Server, name: &str) -> Value {
    let r = srv.post_json("/uc", &json!({"name": name})).await;
    assert_eq!(r.status, 200, "{name}: {}", text(&r));
    r.json()
}

/// The answer of a read of an existing user config whose value is `value`.
fn found(value: Value) -> Value {
    json!({"status": 200, "error": null, "content_type": "application/json", "body": value})
}

/// The answer of a read of a name no user config has.
fn unknown(name: &str) -> Value {
    json!({"status": 404, "error": "unknown_user_config", "content_type": "application/json",
           "body": {"error": format!("no user config named \"{name}\"")}})
}

/// Waits until every read of `name` on `srv` answers `want` (both workers: reads go to
/// either).
async fn until(srv: &Server, name: &str, want: Value) {
    eventually(
        Duration::from_secs(20),
        &format!("{name} to read as {want}"),
        || {
            let want = want.clone();
            async move {
                for _ in 0..4 {
                    if read(srv, name).await != want {
                        return None;
                    }
                }
                Some(())
            }
        },
    )
    .await;
}

#[tokio::test]
async fn the_admin_api_creates_reads_lists_replaces_and_deletes() {
    let srv = env().workers(1).start().await;
    let v0 = config_version(&srv).await;
    let app =
        json!({"crm": {"url": "https://crm.example.com", "retries": 3}, "flags": {"beta": true}});

    // Created (201), then read back with its value; the list has no value, only the size.
    let r = admin(
        &srv,
        "PUT",
        "/v1/user-config/app.settings",
        json!({"value": app, "description": "CRM settings"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", text(&r));
    let size = app.to_string().len();
    assert_eq!(
        r.json(),
        json!({"config_version": v0 + 1, "created": true,
               "user_config": {"name": "app.settings", "description": "CRM settings", "size": size}})
    );
    let r = admin(&srv, "GET", "/v1/user-config/app.settings", Value::Null).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(
        r.json(),
        json!({"name": "app.settings", "description": "CRM settings", "size": size, "value": app})
    );
    let r = admin(&srv, "PUT", "/v1/user-config/other", json!({"value": {}})).await;
    assert_eq!(r.status, 201, "{}", text(&r));
    let r = admin(&srv, "GET", "/v1/user-config", Value::Null).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(
        r.json(),
        json!({"user_config": [
            {"name": "app.settings", "description": "CRM settings", "size": size},
            {"name": "other", "description": null, "size": 2},
        ]})
    );

    // Replaced (200): the body is the whole definition (no description: none).
    let r = admin(
        &srv,
        "PUT",
        "/v1/user-config/app.settings",
        json!({"name": "app.settings", "value": {"crm": {"url": "https://crm2"}}}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(r.json()["created"], false);
    let r = admin(&srv, "GET", "/v1/user-config/app.settings", Value::Null).await;
    assert_eq!(r.json()["value"], json!({"crm": {"url": "https://crm2"}}));
    assert_eq!(r.json()["description"], Value::Null);

    // Refused with a message naming the problem; nothing changed.
    let v = config_version(&srv).await;
    let big = "x".repeat(1024 * 1024);
    for (path, body, want) in [
        (
            "/v1/user-config/app.settings",
            json!({"value": [1, 2]}),
            "user config app.settings: value must be a JSON object (sections of keys), not an array",
        ),
        (
            "/v1/user-config/app.settings",
            json!({"value": "text"}),
            "value must be a JSON object (sections of keys), not a string",
        ),
        (
            "/v1/user-config/app.settings",
            json!({"value": {"k": big}}),
            "more than the 1048576 allowed",
        ),
        (
            "/v1/user-config/a%20b",
            json!({"value": {}}),
            "\"a b\" is not a valid user config name",
        ),
        (
            "/v1/user-config/a%2Fb",
            json!({"value": {}}),
            "\"a/b\" is not a valid user config name",
        ),
        (
            "/v1/user-config/app.settings",
            json!({"name": "renamed", "value": {}}),
            "cannot be renamed",
        ),
        (
            "/v1/user-config/app.settings",
            json!({"description": "no value"}),
            "value: missing",
        ),
        (
            "/v1/user-config/app.settings",
            json!({"value": {}, "descripton": "typo"}),
            "unknown field \"descripton\"",
        ),
        (
            "/v1/user-config/app.settings",
            json!([{"value": {}}]),
            "a user config must be a JSON object",
        ),
    ] {
        let r = admin(&srv, "PUT", path, body).await;
        assert_eq!(r.status, 400, "{path}: {}", text(&r));
        let e = r.json()["error"].as_str().unwrap().to_owned();
        assert!(e.contains(want), "{path}: {e}\n  wanted: {want}");
    }
    let r = srv
        .admin(
            "PUT",
            "/v1/user-config/x",
            Some(&srv.admin_token()),
            b"not json",
        )
        .await;
    assert_eq!(r.status, 400, "{}", text(&r));
    assert_eq!(config_version(&srv).await, v);
    let r = admin(&srv, "GET", "/v1/user-config/app.settings", Value::Null).await;
    assert_eq!(r.json()["value"], json!({"crm": {"url": "https://crm2"}}));

    // Deleted; then gone (404 for a read and a second delete).
    let r = admin(&srv, "DELETE", "/v1/user-config/other", Value::Null).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(
        r.json(),
        json!({"config_version": v + 1, "deleted": "other"})
    );
    for method in ["GET", "DELETE"] {
        let r = admin(&srv, method, "/v1/user-config/other", Value::Null).await;
        assert_eq!(r.status, 404, "{method}: {}", text(&r));
        assert_eq!(r.json()["error"], "no user config named other");
    }

    // Audited as the other kinds are: kind user_config, with digests.
    let r = admin(&srv, "GET", "/v1/audit?object=user_config", Value::Null).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let rows: Vec<String> = r.json()["entries"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|e| {
            format!(
                "{} {} {}{}",
                e["action"].as_str().unwrap(),
                e["name"].as_str().unwrap(),
                if e["before"].is_string() { "B" } else { "-" },
                if e["after"].is_string() { "A" } else { "-" },
            )
        })
        .collect();
    let refused = |n: &str| format!("refused {n} --");
    let mut want = vec![
        "create app.settings -A".to_owned(),
        "create other -A".to_owned(),
        "update app.settings BA".to_owned(),
    ];
    want.extend(
        ["app.settings", "app.settings", "app.settings", "a b", "a/b"]
            .into_iter()
            .chain(["app.settings"; 4])
            .chain(["x"])
            .map(refused),
    );
    want.extend(["delete other B-".to_owned(), refused("other")]);
    assert_eq!(rows, want);
    srv.assert_no_errors(&[]);
}

#[tokio::test]
async fn the_cli_sets_from_json_yaml_and_toml_and_gets_lists_deletes() {
    let srv = env().workers(1).start().await;
    let files = [
        ("a.json", r#"{"db": {"host": "h1", "port": 5432}}"#),
        ("b.yaml", "db:\n  host: h2\n  port: 5433\n"),
        ("c.toml", "[db]\nhost = \"h3\"\nport = 5434\n"),
    ];
    for (i, (file, content)) in files.iter().enumerate() {
        let path = srv.dir.join(file);
        std::fs::write(&path, content).unwrap();
        let name = format!("conf-{i}");
        let out = ok(&srv.cli(&[
            "user-config",
            "set",
            &name,
            "--file",
            path.to_str().unwrap(),
            "--description",
            &format!("from {file}"),
        ]));
        assert!(
            out.starts_with(&format!("user config {name} created (")),
            "{out}"
        );
        let out = ok(&srv.cli(&["user-config", "get", &name]));
        let got: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            got,
            json!({"db": {"host": format!("h{}", i + 1), "port": 5432 + i}})
        );
    }
    let out = ok(&srv.cli(&["user-config", "list"]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(
        lines[1].starts_with("conf-0 ") && lines[1].ends_with("from a.json"),
        "{out}"
    );
    assert!(
        lines[3].starts_with("conf-2 ") && lines[3].ends_with("from c.toml"),
        "{out}"
    );
    let out = ok(&srv.cli(&["user-config", "list", "--output", "json"]));
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["user_config"].as_array().unwrap().len(), 3, "{doc}");

    // A file that is not a mapping: the server's message; an unknown extension: the CLI's.
    let list = srv.dir.join("list.yaml");
    std::fs::write(&list, "- a\n- b\n").unwrap();
    let r = srv.cli(&["user-config", "set", "x", "--file", list.to_str().unwrap()]);
    assert!(!r.status.success());
    let e = String::from_utf8_lossy(&r.stderr);
    assert!(
        e.contains("value must be a JSON object") && e.contains("HTTP 400"),
        "{e}"
    );
    let ini = srv.dir.join("x.ini");
    std::fs::write(&ini, "a=1\n").unwrap();
    let r = srv.cli(&["user-config", "set", "x", "--file", ini.to_str().unwrap()]);
    assert!(!r.status.success());
    let e = String::from_utf8_lossy(&r.stderr);
    assert!(e.contains(".json, .yaml, .yml or .toml"), "{e}");

    let out = ok(&srv.cli(&["user-config", "delete", "conf-1"]));
    assert!(
        out.starts_with("user config conf-1 deleted (config version "),
        "{out}"
    );
    let r = srv.cli(&["user-config", "get", "conf-1"]);
    assert!(!r.status.success());
    let e = String::from_utf8_lossy(&r.stderr);
    assert!(e.contains("no user config named conf-1 (HTTP 404)"), "{e}");
    srv.assert_no_errors(&[]);
}

#[tokio::test]
async fn export_and_import_carry_user_config() {
    let srv = env().workers(1).start().await;
    // None stored: the export has no `user_config` key at all.
    let doc = admin(&srv, "GET", "/v1/config", Value::Null).await.json();
    assert!(doc.get("user_config").is_none(), "{doc}");

    let a = json!({"s": {"k": 1}});
    let b = json!({"s": {"k": 2}});
    for (name, value) in [("a", &a), ("b", &b)] {
        let r = admin(
            &srv,
            "PUT",
            &format!("/v1/user-config/{name}"),
            json!({"value": value, "description": format!("conf {name}")}),
        )
        .await;
        assert_eq!(r.status, 201, "{}", text(&r));
    }
    let file = srv.dir.join("export.yaml");
    ok(&srv.cli(&["config", "export", "--file", file.to_str().unwrap()]));
    let exported = std::fs::read_to_string(&file).unwrap();
    assert!(
        exported.contains("user_config:\n- name: a\n  description: conf a\n  value:\n"),
        "{exported}"
    );

    // Both deleted, then imported back from the export: as they were.
    for name in ["a", "b"] {
        let r = admin(
            &srv,
            "DELETE",
            &format!("/v1/user-config/{name}"),
            Value::Null,
        )
        .await;
        assert_eq!(r.status, 200, "{}", text(&r));
    }
    let out = ok(&srv.cli(&["config", "import", file.to_str().unwrap()]));
    assert!(
        out.contains("create user_config a") && out.contains("create user_config b"),
        "{out}"
    );
    let r = admin(&srv, "GET", "/v1/user-config/b", Value::Null).await;
    assert_eq!(r.json()["value"], b);
    assert_eq!(r.json()["description"], "conf b");
    // Again: nothing changes.
    let out = ok(&srv.cli(&["config", "import", file.to_str().unwrap()]));
    assert!(!out.contains("user_config"), "{out}");

    // The document's entries are checked; one bad one writes nothing.
    let v = config_version(&srv).await;
    let r = admin(
        &srv,
        "POST",
        "/v1/config",
        json!({"user_config": [{"name": "c", "value": {}}, {"name": "d", "value": 5}]}),
    )
    .await;
    assert_eq!(r.status, 400, "{}", text(&r));
    assert!(
        text(&r).contains("user_config[1]: user config d: value must be a JSON object"),
        "{}",
        text(&r)
    );
    let r = admin(
        &srv,
        "POST",
        "/v1/config",
        json!({"user_config": [{"name": "c", "value": {}}, {"name": "c", "value": {}}]}),
    )
    .await;
    assert_eq!(r.status, 400, "{}", text(&r));
    assert!(
        text(&r).contains("user_config: c is listed twice"),
        "{}",
        text(&r)
    );
    assert_eq!(config_version(&srv).await, v);

    // --replace with a document listing only `a` (changed): `b` goes; read live at once.
    let only_a = srv.dir.join("only-a.yaml");
    std::fs::write(
        &only_a,
        "user_config:\n- name: a\n  value:\n    s:\n      k: 10\n",
    )
    .unwrap();
    let out = ok(&srv.cli(&["config", "import", "--replace", only_a.to_str().unwrap()]));
    assert!(out.contains("update user_config a"), "{out}");
    assert!(out.contains("delete user_config b"), "{out}");
    assert_eq!(read(&srv, "a").await, found(json!({"s": {"k": 10}})));
    assert_eq!(read(&srv, "b").await, unknown("b"));
    srv.assert_no_errors(&[]);
}

#[tokio::test]
async fn services_read_user_config_live_through_the_op() {
    let srv = env().start().await;
    let pids = srv.worker_pids();
    assert_eq!(pids.len(), 2);
    assert_eq!(read(&srv, "crm").await, unknown("crm"));

    let v1 = json!({"api": {"url": "https://crm", "timeout_s": 5}, "unicode": {"name": "Zażółć"}});
    let r = admin(&srv, "PUT", "/v1/user-config/crm", json!({"value": v1})).await;
    assert_eq!(r.status, 201, "{}", text(&r));
    // Applied on this server before the answer: every read after it (either worker) sees it.
    for _ in 0..4 {
        assert_eq!(read(&srv, "crm").await, found(v1.clone()));
    }
    let v2 = json!({"api": {"url": "https://crm2"}});
    let r = admin(&srv, "PUT", "/v1/user-config/crm", json!({"value": v2})).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    for _ in 0..4 {
        assert_eq!(read(&srv, "crm").await, found(v2.clone()));
    }
    let r = admin(&srv, "DELETE", "/v1/user-config/crm", Value::Null).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    for _ in 0..4 {
        assert_eq!(read(&srv, "crm").await, unknown("crm"));
    }
    // No worker was restarted for any of it.
    assert_eq!(srv.worker_pids(), pids);

    // A restart boots with the stored user config.
    let r = admin(
        &srv,
        "PUT",
        "/v1/user-config/kept",
        json!({"value": {"a": {"b": 1}}}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", text(&r));
    let srv = srv.restart().await;
    assert_eq!(read(&srv, "kept").await, found(json!({"a": {"b": 1}})));
    srv.assert_no_errors(&[]);
}

#[tokio::test]
async fn a_change_through_one_server_is_read_on_the_other() {
    let (first, db) = env().workers(1).postgres_store();
    let url = format!("{:?}", db.url);
    let a = first.start().await;
    let b = env().workers(1).set("store", "url", &url).start().await;
    let pids = b.worker_pids();

    let r = admin(
        &a,
        "PUT",
        "/v1/user-config/shared",
        json!({"value": {"s": {"v": 1}}}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", text(&r));
    until(&b, "shared", found(json!({"s": {"v": 1}}))).await;
    let r = admin(
        &b,
        "PUT",
        "/v1/user-config/shared",
        json!({"value": {"s": {"v": 2}}}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    until(&a, "shared", found(json!({"s": {"v": 2}}))).await;
    assert_eq!(read(&b, "shared").await, found(json!({"s": {"v": 2}})));
    let r = admin(&a, "DELETE", "/v1/user-config/shared", Value::Null).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    until(&b, "shared", unknown("shared")).await;
    assert_eq!(b.worker_pids(), pids, "no restart");
    a.assert_no_errors(&[]);
    b.assert_no_errors(&[]);
}
