//! Outgoing connection definitions (issue 19) against the real binary: CRUD of REST and SQL
//! connections through the admin API and `oxbus out`, a refusal per rule family naming the
//! field, 404s, roles, credentials (sealed, kept on an edit, never shown in answers, lists,
//! exports, the audit log or the server log), export → import on a fresh server with the same
//! key, `replace`, a second server of a PostgreSQL cluster applying a definition made on the
//! first, the metrics series, and a ping of a REST connection to a closed port.

use oxbus_integration::api::{self, admin, config_version, ok, text};
use oxbus_integration::prom::{self, scrape_until};
use oxbus_integration::*;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;

/// Credentials the tests send; none may appear anywhere an operator reads.
const REST_PW: &str = "pw-rest-7f3a9c";
const SQL_PW: &str = "pw-sql-91c2e4";
const CLI_TOKEN: &str = "tok-cli-4b8d21";
const IMPORT_TOKEN: &str = "tok-import-55e0aa";

fn env() -> Env {
    Env::new().workers(1).set("metrics", "enabled", "true")
}

fn assert_no_secret(text: &str, where_: &str) {
    for s in [REST_PW, SQL_PW, CLI_TOKEN, IMPORT_TOKEN] {
        assert!(
            !text.contains(s),
            "{where_} shows a credential ({s}):\n{text}"
        );
    }
}

async fn put(srv: &Server, kind: &str, name: &str, def: Value, status: u16) -> Value {
    api::put(srv, &format!("outgoing/{kind}"), name, def, status).await
}

async fn refused(srv: &Server, kind: &str, name: &str, body: Value, needles: &[&str]) {
    api::refused(
        srv,
        &format!("outgoing/{kind}"),
        name,
        &body.to_string(),
        needles,
    )
    .await
}

async fn get(srv: &Server, path: &str) -> Value {
    let r = admin(srv, "GET", path, Value::Null).await;
    assert_eq!(r.status, 200, "GET {path}: {}", text(&r));
    r.json()
}

/// A unique key file for servers that must open each other's sealed values.
fn shared_key() -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("oxbus-outkey-{}-{}", std::process::id(), next_id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("secret.key")
}

fn with_key(e: Env, key: &std::path::Path) -> Env {
    e.set(
        "store",
        "key_file",
        &format!("{:?}", key.display().to_string()),
    )
}

/// The sealed value an export holds for the REST connection `name`.
async fn exported_rest_sealed(srv: &Server, name: &str) -> String {
    let doc = get(srv, "/v1/config").await;
    doc["outgoing_rest"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("{name} not exported: {doc}"))["auth"]["sealed"]
        .as_str()
        .unwrap_or_else(|| panic!("{name} exported without its sealed credential: {doc}"))
        .to_owned()
}

#[tokio::test]
async fn connections_are_created_edited_refused_and_deleted_with_credentials_kept_sealed() {
    let srv = env().start().await;
    let v0 = config_version(&srv).await;

    // Create a REST connection with basic auth: 201, the credential never echoed.
    let a = put(
        &srv,
        "rest",
        "crm",
        json!({
            "address": "https://crm.example.com:8443",
            "url_path": "/api/{version}/customers/{id}",
            "timeout_ms": 2000,
            "headers": {"X-Tenant": "acme"},
            "auth": {"type": "basic", "username": "svc", "password": REST_PW},
        }),
        201,
    )
    .await;
    assert_no_secret(&a.to_string(), "the PUT answer");
    assert_eq!(a["config_version"], v0 + 1);
    assert_eq!(a["created"], true);
    let c = &a["connection"];
    assert_eq!(c["name"], "crm");
    assert_eq!(c["has_secret"], true);
    assert_eq!(c["auth"], json!({"type": "basic", "username": "svc"}));
    assert_eq!(c["pool_size"], 20, "a default");
    assert_eq!(c["connect_timeout_ms"], 10000, "a default");
    assert!(c.get("sealed").is_none(), "{c}");
    let one = get(&srv, "/v1/outgoing/rest/crm").await;
    assert_eq!(one, *c);
    let sealed = exported_rest_sealed(&srv, "crm").await;
    assert!(sealed.starts_with("oxbus1:"), "{sealed}");

    // The list: every definition with this server's figures.
    let list = get(&srv, "/v1/outgoing/rest").await;
    let entry = &list["rest"][0];
    assert_eq!(entry["name"], "crm");
    assert_eq!(entry["has_secret"], true);
    assert_eq!(entry["stats"]["name"], "crm", "{list}");
    assert_eq!(entry["stats"]["type"], "rest", "{list}");
    assert_eq!(entry["stats"]["calls"], 0, "{list}");
    let stats = get(&srv, "/v1/outgoing/rest/crm/stats").await;
    assert_eq!(stats["name"], "crm");
    assert!(
        stats["in_use"].is_u64() && stats["waiting"].is_u64(),
        "{stats}"
    );

    // An edit that sends the credential elsewhere (another host, port or scheme) or for
    // another user must give it again: nothing changes.
    for (address, user) in [
        ("http://evil.example", "svc"),
        ("https://crm.example.com", "svc"),
        ("https://crm.example.com:8443", "svc2"),
    ] {
        refused(
            &srv,
            "rest",
            "crm",
            json!({"address": address, "auth": {"type": "basic", "username": user}}),
            &["crm", "the destination changed: give auth.password again"],
        )
        .await;
    }
    assert_eq!(exported_rest_sealed(&srv, "crm").await, sealed);
    // An edit of another field without the credential keeps the stored sealed value.
    let b = put(
        &srv,
        "rest",
        "crm",
        json!({
            "address": "https://CRM.example.com:8443",
            "auth": {"type": "basic", "username": "svc"},
        }),
        200,
    )
    .await;
    assert_eq!(b["created"], false);
    assert_eq!(b["connection"]["has_secret"], true);
    assert_eq!(b["connection"]["address"], "https://CRM.example.com:8443");
    assert_eq!(b["connection"]["url_path"], "/", "replaced, not merged");
    assert_eq!(
        exported_rest_sealed(&srv, "crm").await,
        sealed,
        "kept as stored"
    );
    // The same definition sent back as GET shows it (has_secret included) is taken.
    let shown = get(&srv, "/v1/outgoing/rest/crm").await;
    put(&srv, "rest", "crm", shown, 200).await;
    assert_eq!(exported_rest_sealed(&srv, "crm").await, sealed);
    // Another auth type needs its own credential.
    refused(
        &srv,
        "rest",
        "crm",
        json!({"address": "https://h", "auth": {"type": "bearer"}}),
        &["crm", "auth.token", "missing"],
    )
    .await;

    // A refusal per rule family, each naming the field; nothing stored.
    let h = |extra: Value| {
        let mut v = json!({"address": "https://h"});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        v
    };
    for (body, needles) in [
        (
            json!({"address": "https://h/path"}),
            vec!["address", "path"],
        ),
        (
            json!({"address": format!("https://u:{REST_PW}@h")}),
            vec!["address", "user info", "https://***@h"],
        ),
        (
            h(json!({"headers": {"Authorization": "Basic eA=="}})),
            vec!["headers", "Authorization", "give it in auth"],
        ),
        (
            h(json!({"headers": {"cookie": "s=1"}})),
            vec!["headers", "cookie", "give it in auth"],
        ),
        (
            h(json!({"auth": {"type": "apikey", "header": "traceparent", "key": REST_PW}})),
            vec!["auth.header", "traceparent"],
        ),
        (
            h(
                json!({"auth": {"type": "oauth2", "token_url": "https://idp/t?secret=x", "client_id": "c", "client_secret": "s"}}),
            ),
            vec!["auth.token_url", "query string"],
        ),
        (json!({"address": "ftp://h"}), vec!["address"]),
        (
            h(json!({"url_path": "/a/{b-c}"})),
            vec!["url_path", "placeholder"],
        ),
        (h(json!({"ping_path": "health"})), vec!["ping_path"]),
        (h(json!({"timeout_ms": 0})), vec!["timeout_ms"]),
        (
            h(json!({"timeout_ms": "ten"})),
            vec!["timeout_ms", "invalid type"],
        ),
        (h(json!({"pool_size": 1001})), vec!["pool_size"]),
        (h(json!({"retries": 11})), vec!["retries"]),
        (h(json!({"ping_method": "FETCH"})), vec!["ping_method"]),
        (
            h(json!({"max_response_bytes": 0})),
            vec!["max_response_bytes"],
        ),
        (
            h(json!({"headers": {"Host": "x"}})),
            vec!["headers", "Host"],
        ),
        (
            h(json!({"headers": {"X-A": "a\r\nB: c"}})),
            vec!["headers", "line break"],
        ),
        (
            h(json!({"tls": {"client_cert_file": "/c.pem"}})),
            vec!["tls", "client_key_file"],
        ),
        (
            json!({"address": "http://h", "tls": {"verify": false}}),
            vec!["tls", "https://"],
        ),
        (
            h(
                json!({"auth": {"type": "oauth2", "token_url": "ftp://t", "client_id": "c", "client_secret": "s"}}),
            ),
            vec!["auth.token_url"],
        ),
        (
            h(json!({"auth": {"type": "bearer", "token": REST_PW, "sealed": "oxbus1:a:b:c"}})),
            vec!["not both"],
        ),
        (h(json!({"adress": "x"})), vec!["adress", "unknown field"]),
        (
            json!({"name": "other", "address": "https://h"}),
            vec!["renamed"],
        ),
    ] {
        refused(&srv, "rest", "crm", body, &needles).await;
    }

    // SQL: the password sealed; a password in the URL refused with the way out.
    let s = put(
        &srv,
        "sql",
        "db",
        json!({"engine": "postgresql", "url": "postgres://app@127.0.0.1:5432/test", "password": SQL_PW, "pool_max": 4}),
        201,
    )
    .await;
    assert_no_secret(&s.to_string(), "the SQL PUT answer");
    assert_eq!(s["connection"]["has_secret"], true);
    assert_eq!(s["connection"]["pool_max"], 4);
    // Another URL (user, host, database, parameters) must give the password again.
    for url in [
        "postgres://root@127.0.0.1:5432/test",
        "postgres://app@evil.example:5432/test",
        "postgres://app@127.0.0.1:5432/test?sslmode=disable",
    ] {
        refused(
            &srv,
            "sql",
            "db",
            json!({"engine": "postgresql", "url": url, "pool_max": 4}),
            &["db", "the destination changed: give password again"],
        )
        .await;
    }
    for (body, needles) in [
        (
            json!({"engine": "postgresql", "url": format!("postgres://app:{SQL_PW}@h/db")}),
            vec!["url", "`password`"],
        ),
        (
            json!({"engine": "mysql", "url": "postgres://h/db"}),
            vec!["url", "mysql://"],
        ),
        (
            json!({"engine": "postgresql", "url": "postgres://h/db", "pool_min": 5, "pool_max": 2}),
            vec!["pool_min"],
        ),
        (
            json!({"engine": "postgresql", "url": "postgres://h/db", "pool_max": 101}),
            vec!["pool_max"],
        ),
        (
            json!({"engine": "sqlite", "url": "sqlite:///tmp/x.db", "password": "x"}),
            vec!["password"],
        ),
    ] {
        let r = admin(&srv, "PUT", "/v1/outgoing/sql/db", body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {}", text(&r));
        let msg = r.json()["error"].as_str().unwrap().to_owned();
        assert_no_secret(&msg, "a refusal");
        for n in needles {
            assert!(msg.contains(n), "{body}: {msg:?} lacks {n:?}");
        }
    }
    // The same URL: kept; another URL with its password: sealed anew.
    let s = put(
        &srv,
        "sql",
        "db",
        json!({"engine": "postgresql", "url": "postgres://app@127.0.0.1:5432/test", "max_rows": 50}),
        200,
    )
    .await;
    assert_eq!(s["connection"]["has_secret"], true);
    assert_eq!(s["connection"]["max_rows"], 50);
    let s = put(
        &srv,
        "sql",
        "db",
        json!({"engine": "postgresql", "url": "postgresql://root@127.0.0.1/other", "password": SQL_PW}),
        200,
    )
    .await;
    assert_eq!(s["connection"]["has_secret"], true);
    assert_no_secret(&s.to_string(), "the SQL PUT answer");

    // 404s, each naming what is missing.
    for (method, path, needle) in [
        (
            "GET",
            "/v1/outgoing/rest/ghost",
            "no REST connection named ghost",
        ),
        (
            "DELETE",
            "/v1/outgoing/rest/ghost",
            "no REST connection named ghost",
        ),
        (
            "GET",
            "/v1/outgoing/sql/ghost",
            "no SQL connection named ghost",
        ),
        ("POST", "/v1/outgoing/sql/ghost/ping", "ghost"),
        ("GET", "/v1/outgoing/rest/ghost/stats", "ghost"),
        ("GET", "/v1/outgoing/ftp", "/v1/outgoing/rest"),
    ] {
        let r = admin(&srv, method, path, Value::Null).await;
        assert_eq!(r.status, 404, "{method} {path}: {}", text(&r));
        assert!(text(&r).contains(needle), "{method} {path}: {}", text(&r));
    }

    // Roles: a viewer reads but cannot change or ping.
    let r = admin(
        &srv,
        "POST",
        "/v1/tokens",
        json!({"name": "watcher", "role": "viewer"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", text(&r));
    let viewer = r.json()["token"].as_str().unwrap().to_owned();
    let r = srv
        .admin("GET", "/v1/outgoing/rest", Some(&viewer), b"")
        .await;
    assert_eq!(r.status, 200);
    let r = srv
        .admin("GET", "/v1/outgoing/sql/db/stats", Some(&viewer), b"")
        .await;
    assert_eq!(r.status, 200);
    let v = config_version(&srv).await;
    for (method, path) in [
        ("PUT", "/v1/outgoing/rest/crm"),
        ("DELETE", "/v1/outgoing/sql/db"),
        ("POST", "/v1/outgoing/rest/crm/ping"),
    ] {
        let r = srv
            .admin(method, path, Some(&viewer), br#"{"address": "https://h"}"#)
            .await;
        assert_eq!(r.status, 403, "{method} {path}: {}", text(&r));
    }
    assert_eq!(config_version(&srv).await, v, "nothing changed");

    // The CLI: put from a file with the credential from another file, list, get, stats,
    // delete.
    let def = srv.dir.join("billing.json");
    std::fs::write(
        &def,
        r#"{"address": "http://127.0.0.1:9", "auth": {"type": "bearer"}, "ping_method": "GET"}"#,
    )
    .unwrap();
    let secret = srv.dir.join("billing.token");
    std::fs::write(&secret, format!("{CLI_TOKEN}\n")).unwrap();
    let out = ok(&srv.cli(&[
        "out",
        "put",
        "rest",
        "billing",
        def.to_str().unwrap(),
        "--secret-file",
        secret.to_str().unwrap(),
    ]));
    assert!(out.contains("rest connection billing created"), "{out}");
    assert_eq!(
        get(&srv, "/v1/outgoing/rest/billing").await["has_secret"],
        true
    );
    let out = ok(&srv.cli(&["out", "list"]));
    assert!(
        out.contains("billing") && out.contains("crm") && out.contains("db"),
        "{out}"
    );
    assert!(
        out.contains("http://127.0.0.1:9/  auth bearer  (credential set)"),
        "{out}"
    );
    assert_no_secret(&out, "oxbus out list");
    let out = ok(&srv.cli(&["out", "get", "rest", "billing"]));
    assert!(out.contains("\"has_secret\": true"), "{out}");
    assert_no_secret(&out, "oxbus out get");
    let out = ok(&srv.cli(&["out", "stats"]));
    assert!(out.starts_with("TYPE  CONN"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("sql   db ")), "{out}");
    let out = ok(&srv.cli(&["out", "stats", "rest", "crm", "--output", "json"]));
    let rows: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(rows[0]["name"], "crm", "{out}");
    // A credential for an auth that takes none is refused before anything is sent.
    std::fs::write(&def, r#"{"address": "http://127.0.0.1:9"}"#).unwrap();
    let bad = srv.cli(&[
        "out",
        "put",
        "rest",
        "billing",
        def.to_str().unwrap(),
        "--secret-file",
        secret.to_str().unwrap(),
    ]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("auth.type takes none"),
        "{bad:?}"
    );
    let out = ok(&srv.cli(&["out", "delete", "rest", "billing"]));
    assert!(out.contains("rest connection billing deleted"), "{out}");
    let r = admin(&srv, "GET", "/v1/outgoing/rest/billing", Value::Null).await;
    assert_eq!(r.status, 404);

    // The audit log records the changes by kind and name, never a credential.
    let r = admin(
        &srv,
        "GET",
        "/v1/audit?object=outgoing_rest/crm&limit=100",
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let entries = r.json()["entries"].as_array().unwrap().clone();
    assert!(
        entries
            .iter()
            .any(|e| e["kind"] == "outgoing_rest" && e["name"] == "crm" && e["action"] == "create"),
        "{entries:#?}"
    );
    let all = admin(&srv, "GET", "/v1/audit?limit=1000", Value::Null).await;
    assert!(text(&all).contains("outgoing_sql"), "{}", text(&all));
    assert_no_secret(&text(&all), "GET /v1/audit");
    assert_no_secret(&text(&get_raw(&srv, "/v1/config").await), "the export");
    assert_no_secret(
        &text(&get_raw(&srv, "/v1/outgoing/sql").await),
        "the SQL list",
    );

    // Survives a restart (boot applies the stored definitions: figures are there at once).
    let srv = srv.restart().await;
    let stats = get(&srv, "/v1/outgoing/sql/db/stats").await;
    assert_eq!(stats["name"], "db");
    assert_eq!(exported_rest_sealed(&srv, "crm").await, sealed);

    // The metrics: every series of both connections, a page promtool accepts.
    let p = scrape_until(&srv, "the outgoing series", |p| {
        p.get(
            "oxbus_outgoing_pool_size",
            &[("type", "sql"), ("conn", "db")],
        )
        .is_some()
    })
    .await;
    prom::check(&p.text);
    for (name, labels) in [
        (
            "oxbus_outgoing_calls_total",
            vec![("type", "rest"), ("conn", "crm")],
        ),
        (
            "oxbus_outgoing_errors_total",
            vec![("type", "sql"), ("conn", "db")],
        ),
        (
            "oxbus_outgoing_call_duration_seconds_count",
            vec![("type", "rest"), ("conn", "crm")],
        ),
        (
            "oxbus_outgoing_pool_connections",
            vec![("type", "rest"), ("conn", "crm"), ("state", "in_use")],
        ),
        (
            "oxbus_outgoing_pool_connections",
            vec![("type", "sql"), ("conn", "db"), ("state", "idle")],
        ),
        (
            "oxbus_outgoing_pool_waiting",
            vec![("type", "rest"), ("conn", "crm")],
        ),
        (
            "oxbus_outgoing_pool_size",
            vec![("type", "rest"), ("conn", "crm")],
        ),
    ] {
        assert!(
            p.get(name, &labels).is_some(),
            "{name}{labels:?} missing:\n{}",
            p.text
        );
    }

    // Delete: gone from the store and from this server.
    let r = admin(&srv, "DELETE", "/v1/outgoing/sql/db", Value::Null).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(r.json()["deleted"], "db");
    let r = admin(&srv, "GET", "/v1/outgoing/sql/db/stats", Value::Null).await;
    assert_eq!(r.status, 404);
    assert_eq!(get(&srv, "/v1/outgoing/sql").await["sql"], json!([]));

    // Not in the server's log either.
    assert_no_secret(&srv.log(), "the server log");
    srv.assert_no_errors(&[]);
}

async fn get_raw(srv: &Server, path: &str) -> Resp {
    let r = admin(srv, "GET", path, Value::Null).await;
    assert_eq!(r.status, 200, "GET {path}: {}", text(&r));
    r
}

#[tokio::test]
async fn an_export_imports_on_a_fresh_server_with_the_same_key_and_replace_deletes() {
    let key = shared_key();
    let a = with_key(env(), &key).start().await;
    put(
        &a,
        "rest",
        "crm",
        json!({"address": "https://crm.example.com", "auth": {"type": "basic", "username": "svc", "password": REST_PW}}),
        201,
    )
    .await;
    put(
        &a,
        "sql",
        "db",
        json!({"engine": "mysql", "url": "mysql://root@127.0.0.1:3306/test", "password": SQL_PW}),
        201,
    )
    .await;
    // An import with a plaintext credential: sealed on import; the same again: unchanged.
    let plain = json!({"outgoing_rest": [{"name": "erp", "address": "https://erp.example.com",
        "auth": {"type": "bearer", "token": IMPORT_TOKEN}}]});
    let r = admin(&a, "POST", "/v1/config", plain.clone()).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_no_secret(&text(&r), "the import report");
    assert!(text(&r).contains("\"outgoing_rest\""), "{}", text(&r));
    let v = config_version(&a).await;
    let r = admin(&a, "POST", "/v1/config", plain).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(r.json()["changes"], json!([]), "{}", text(&r));
    assert_eq!(
        config_version(&a).await,
        v,
        "a plaintext sealed again is no change"
    );
    // Refused in full: a bad entry names the list, the entry and the field.
    let r = admin(
        &a,
        "POST",
        "/v1/config",
        json!({"outgoing_sql": [{"name": "x", "engine": "sqlite", "url": "postgres://h/db"}]}),
    )
    .await;
    assert_eq!(r.status, 400, "{}", text(&r));
    assert!(
        text(&r).contains("outgoing_sql[0]") && text(&r).contains("url:"),
        "{}",
        text(&r)
    );

    let export = get(&a, "/v1/config").await;
    let export_text = export.to_string();
    assert_no_secret(&export_text, "the export");
    assert_eq!(
        export["outgoing_rest"].as_array().unwrap().len(),
        2,
        "{export}"
    );
    assert!(
        export["outgoing_sql"][0]["sealed"]
            .as_str()
            .unwrap()
            .starts_with("oxbus1:"),
        "{export}"
    );
    // The YAML export of the CLI carries them too.
    let out = ok(&a.cli(&["config", "export"]));
    assert!(
        out.contains("outgoing_rest:") && out.contains("outgoing_sql:"),
        "{out}"
    );
    assert_no_secret(&out, "the YAML export");

    // A fresh server with the same key: the export imports, and again changes nothing.
    let b = with_key(env(), &key).start().await;
    let r = admin(&b, "POST", "/v1/config", export.clone()).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let changes = r.json()["changes"].clone();
    for (kind, name) in [
        ("outgoing_rest", "crm"),
        ("outgoing_rest", "erp"),
        ("outgoing_sql", "db"),
    ] {
        assert!(
            changes
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["kind"] == kind && c["name"] == name && c["action"] == "create"),
            "{kind} {name}: {changes}"
        );
    }
    let r = admin(&b, "POST", "/v1/config", export.clone()).await;
    assert_eq!(r.json()["changes"], json!([]), "{}", text(&r));
    // The YAML of the CLI too: nothing to change.
    let yaml = a.dir.join("export.yaml");
    std::fs::write(&yaml, &out).unwrap();
    let imported = ok(&b.cli(&["config", "import", yaml.to_str().unwrap()]));
    assert!(imported.starts_with("0 changes"), "{imported}");
    assert_eq!(get(&b, "/v1/outgoing/rest/crm").await["has_secret"], true);
    assert_eq!(get(&b, "/v1/outgoing/sql/db").await["has_secret"], true);
    // Applied on b at once.
    assert_eq!(get(&b, "/v1/outgoing/rest/erp/stats").await["name"], "erp");

    // A server with another key refuses the sealed values, naming the connection.
    let c = env().start().await;
    let r = admin(&c, "POST", "/v1/config", export.clone()).await;
    assert_eq!(r.status, 400, "{}", text(&r));
    assert!(
        text(&r).contains("does not open with this server's key"),
        "{}",
        text(&r)
    );

    // `replace`: what the document does not list is deleted, here and live.
    let only = json!({"outgoing_rest": [export["outgoing_rest"][0].clone()]});
    let kept = only["outgoing_rest"][0]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = admin(&b, "POST", "/v1/config?replace=1", only).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let deletes: Vec<String> = r.json()["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["action"] == "delete" && c["kind"].as_str().unwrap().starts_with("outgoing"))
        .map(|c| {
            format!(
                "{} {}",
                c["kind"].as_str().unwrap(),
                c["name"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(deletes.len(), 2, "{deletes:?}");
    assert!(
        deletes.contains(&"outgoing_sql db".to_owned()),
        "{deletes:?}"
    );
    let names: Vec<String> = get(&b, "/v1/outgoing/rest").await["rest"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, [kept]);
    assert_eq!(get(&b, "/v1/outgoing/sql").await["sql"], json!([]));
    let r = admin(&b, "GET", "/v1/outgoing/sql/db/stats", Value::Null).await;
    assert_eq!(r.status, 404, "deleted on this server too");

    for s in [&a, &b, &c] {
        assert_no_secret(&s.log(), "a server log");
    }
    a.assert_no_errors(&[]);
    b.assert_no_errors(&[]);
}

#[tokio::test]
async fn a_connection_made_on_one_server_is_applied_on_another_of_the_cluster() {
    let key = shared_key();
    let (first, db) = with_key(env(), &key).postgres_store();
    let url = format!("{:?}", db.url);
    let a = first.start().await;
    let b = with_key(env(), &key)
        .set("store", "url", &url)
        .start()
        .await;
    put(
        &a,
        "rest",
        "shared",
        json!({"address": "https://shared.example.com", "auth": {"type": "bearer", "token": REST_PW}}),
        201,
    )
    .await;
    // b's own connections (its figures exist only once b applied the definition).
    eventually(
        Duration::from_secs(30),
        "b applies the connection",
        || async {
            let r = admin(&b, "GET", "/v1/outgoing/rest/shared/stats", Value::Null).await;
            (r.status == 200).then_some(())
        },
    )
    .await;
    assert_eq!(
        get(&b, "/v1/outgoing/rest/shared").await["has_secret"],
        true
    );
    // A delete on b reaches a.
    let r = admin(&b, "DELETE", "/v1/outgoing/rest/shared", Value::Null).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    eventually(
        Duration::from_secs(30),
        "a drops the connection",
        || async {
            let r = admin(&a, "GET", "/v1/outgoing/rest/shared/stats", Value::Null).await;
            (r.status == 404).then_some(())
        },
    )
    .await;
    assert_no_secret(&a.log(), "a's log");
    assert_no_secret(&b.log(), "b's log");
    a.assert_no_errors(&[]);
    b.assert_no_errors(&[]);
}

/// Needs the REST client (helper 2's part of issue 19): before it, ping answers "not built".
#[tokio::test]
async fn a_ping_of_a_rest_connection_to_a_closed_port_fails_with_a_detail() {
    let srv = env().start().await;
    // A port nothing listens on: bound, then closed.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    put(
        &srv,
        "rest",
        "closed",
        json!({"address": format!("http://127.0.0.1:{port}"), "retries": 0, "connect_timeout_ms": 2000}),
        201,
    )
    .await;
    let r = admin(&srv, "POST", "/v1/outgoing/rest/closed/ping", Value::Null).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let p = r.json();
    assert_eq!(p["ok"], false, "{p}");
    let detail = p["detail"].as_str().unwrap().to_ascii_lowercase();
    assert!(
        detail.contains("refused") || detail.contains("connect"),
        "{p}"
    );
    assert!(!detail.contains("not built"), "{p}");
    let out = srv.cli(&["out", "ping", "rest", "closed"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("FAILED"),
        "{out:?}"
    );
}

/// A fake PostgreSQL server on loopback that asks for a cleartext password: the startup
/// parameters and the password a client sends on its first connection.
async fn fake_pg_password(l: tokio::net::TcpListener) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut s, _) = l.accept().await.unwrap();
    loop {
        let len = s.read_i32().await.unwrap() as usize;
        let mut body = vec![0; len - 4];
        s.read_exact(&mut body).await.unwrap();
        if body[..4] == 80877103i32.to_be_bytes() {
            s.write_all(b"N").await.unwrap(); // no TLS
            continue;
        }
        let startup = String::from_utf8_lossy(&body[4..]).replace('\0', " ");
        // AuthenticationCleartextPassword.
        s.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3]).await.unwrap();
        assert_eq!(s.read_u8().await.unwrap(), b'p');
        let len = s.read_i32().await.unwrap() as usize;
        let mut pw = vec![0; len - 4];
        s.read_exact(&mut pw).await.unwrap();
        let pw = String::from_utf8_lossy(&pw)
            .trim_end_matches('\0')
            .to_owned();
        return (startup, pw);
    }
}

#[tokio::test]
async fn an_sql_connection_without_a_password_never_sends_the_servers_own() {
    const ENV_PW: &str = "pw-env-3d9e0b";
    let pgpass = std::env::temp_dir().join(format!("oxbus-pgpass-{}", next_id()));
    std::fs::write(&pgpass, "*:*:*:*:pw-pgpass-77aa10\n").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let srv = env()
        .env("PGPASSWORD", ENV_PW)
        .env("PGPASSFILE", pgpass.to_str().unwrap())
        .env("PGDATABASE", "envdb")
        .start()
        .await;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let fake = tokio::spawn(fake_pg_password(l));
    put(
        &srv,
        "sql",
        "nopw",
        json!({"engine": "postgresql", "url": format!("postgres://app@127.0.0.1:{port}"), "pool_wait_ms": 3000}),
        201,
    )
    .await;
    let r = admin(&srv, "POST", "/v1/outgoing/sql/nopw/ping", Value::Null).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let (startup, pw) = fake.await.unwrap();
    assert_eq!(pw, "", "the password sent (startup: {startup})");
    assert!(startup.contains("database app"), "{startup}");
    assert!(!startup.contains("envdb"), "{startup}");
    std::fs::remove_file(&pgpass).unwrap();

    // A client key the driver would present to any host, which cannot be overridden: the
    // connection fails naming the variable; the URL's own key is taken.
    let srv = env().env("PGSSLKEY", "/etc/server-own.key").start().await;
    put(
        &srv,
        "sql",
        "keyed",
        json!({"engine": "postgresql", "url": "postgres://app@127.0.0.1:9/db"}),
        201,
    )
    .await;
    let r = admin(&srv, "POST", "/v1/outgoing/sql/keyed/ping", Value::Null).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(r.json()["ok"], false, "{}", text(&r));
    assert!(text(&r).contains("PGSSLKEY"), "{}", text(&r));
    put(
        &srv,
        "sql",
        "keyed2",
        json!({"engine": "postgresql", "url": "postgres://app@127.0.0.1:9/db?sslkey=/tmp/k.pem"}),
        201,
    )
    .await;
    let r = admin(&srv, "POST", "/v1/outgoing/sql/keyed2/ping", Value::Null).await;
    assert!(!text(&r).contains("PGSSLKEY"), "{}", text(&r));
}
