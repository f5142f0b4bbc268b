//! Cache definitions (issue 7) against the real binary: CRUD through the admin API with each
//! cache's figures, refused definitions naming the field, the built-in `default`, config
//! export → import (YAML through the CLI) with `--replace` and `--dry-run`, a change reaching
//! another server of the cluster over the bus, and a restart with the store down that boots
//! the definitions from the snapshot.

use oxbus_integration::api::{self, admin, config_version, export_body, ok, text};
use oxbus_integration::bus::linked;
use oxbus_integration::*;
use serde_json::{Value, json};
use std::time::Duration;

/// The live caches of `srv`, by name.
async fn caches(srv: &Server) -> Vec<Value> {
    api::list(srv, "caches").await
}

async fn names(srv: &Server) -> Vec<String> {
    api::names(srv, "caches").await
}

/// PUT a definition; asserts the status.
async fn put(srv: &Server, name: &str, def: Value, status: u16) -> Value {
    api::put(srv, "caches", name, def, status).await
}

/// A 400 whose message contains every one of `needles`; nothing is stored.
async fn refused(srv: &Server, name: &str, body: &str, needles: &[&str]) {
    api::refused(srv, "caches", name, body, needles).await
}

#[tokio::test]
async fn definitions_are_created_listed_replaced_and_deleted_through_the_admin_api() {
    let srv = Env::new().start().await;
    let v0 = config_version(&srv).await;

    // At first only the built-in default, with every figure.
    let list = caches(&srv).await;
    assert_eq!(
        list,
        [json!({
            "name": "default", "max_entries": 10000, "max_item_size": 1048576,
            "default_expiry_s": 0, "extend_expiry_on_get": false, "replicate": true,
            "entries": 0, "hits": 0, "misses": 0, "sets": 0, "deletes": 0, "evictions": 0,
            "builtin": true,
        })]
    );
    let r = admin(&srv, "GET", "/v1/caches/default", Value::Null).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), list[0]);

    // Create: 201, the new version, the cache as it is now live.
    let a = put(
        &srv,
        "sessions",
        json!({"max_entries": 500, "default_expiry_s": 60}),
        201,
    )
    .await;
    assert_eq!(a["config_version"], v0 + 1);
    assert_eq!(a["created"], true);
    assert_eq!(a["cache"]["name"], "sessions");
    assert_eq!(a["cache"]["max_entries"], 500);
    assert_eq!(a["cache"]["default_expiry_s"], 60);
    assert_eq!(a["cache"]["replicate"], true, "a default");
    assert_eq!(a["cache"]["builtin"], false);
    assert_eq!(a["cache"]["entries"], 0);
    assert_eq!(names(&srv).await, ["default", "sessions"]);
    let one = admin(&srv, "GET", "/v1/caches/sessions", Value::Null)
        .await
        .json();
    assert_eq!(one, a["cache"]);

    // Replace: 200; fields left out take their defaults (no merge); `name` may be given.
    let b = put(
        &srv,
        "sessions",
        json!({"name": "sessions", "replicate": false, "extend_expiry_on_get": true}),
        200,
    )
    .await;
    assert_eq!(b["config_version"], v0 + 2);
    assert_eq!(b["created"], false);
    let now = &caches(&srv).await[1];
    assert_eq!(now["max_entries"], 10000);
    assert_eq!(now["default_expiry_s"], 0);
    assert_eq!(now["replicate"], false);
    assert_eq!(now["extend_expiry_on_get"], true);

    // Refused, each naming the field; nothing stored.
    refused(
        &srv,
        "sessions",
        r#"{"max_entires": 5, "ttl": 3}"#,
        &["max_entires", "ttl", "unknown"],
    )
    .await;
    refused(
        &srv,
        "sessions",
        r#"{"max_entries": "many"}"#,
        &["max_entries", "invalid type"],
    )
    .await;
    refused(&srv, "sessions", r#"{"max_entries": 0}"#, &["max_entries"]).await;
    refused(
        &srv,
        "sessions",
        r#"{"max_item_size": 1000000000}"#,
        &["max_item_size"],
    )
    .await;
    refused(
        &srv,
        "sessions",
        r#"{"default_expiry_s": -1}"#,
        &["default_expiry_s"],
    )
    .await;
    refused(&srv, "sessions", r#"{"name": "other"}"#, &["renamed"]).await;
    refused(&srv, "bad%20name", "{}", &["not a valid cache name"]).await;
    refused(&srv, "sessions", "[1]", &["JSON object"]).await;
    refused(&srv, "sessions", "not json", &["not JSON"]).await;
    assert_eq!(caches(&srv).await[1], *now, "unchanged");

    // The admin token is required.
    let r = srv.admin("GET", "/v1/caches", None, b"").await;
    assert_eq!(r.status, 401);
    let r = srv.admin("PUT", "/v1/caches/x", Some("wrong"), b"{}").await;
    assert_eq!(r.status, 401);

    // The default cannot be deleted, built in or stored; PUT changes it. A stored definition
    // equal to the built-in one is still a stored one.
    let r = admin(&srv, "DELETE", "/v1/caches/default", Value::Null).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["error"],
        "the default cache always exists; PUT it to change its settings"
    );
    let d = put(&srv, "default", json!({}), 201).await;
    assert_eq!(d["cache"]["builtin"], false, "{d}");
    let d = put(&srv, "default", json!({"max_entries": 42}), 200).await;
    assert_eq!(d["cache"]["max_entries"], 42);
    let r = admin(&srv, "DELETE", "/v1/caches/default", Value::Null).await;
    assert_eq!(r.status, 400);

    // Unknown caches: 404 with a message naming them.
    for (method, path) in [("GET", "/v1/caches/ghost"), ("DELETE", "/v1/caches/ghost")] {
        let r = admin(&srv, method, path, Value::Null).await;
        assert_eq!(r.status, 404, "{method} {path}: {}", text(&r));
        assert_eq!(r.json()["error"], "no cache named ghost");
    }

    // Survives a restart (read back from the store).
    let srv = srv.restart().await;
    assert_eq!(names(&srv).await, ["default", "sessions"]);
    assert_eq!(caches(&srv).await[0]["max_entries"], 42);
    assert_eq!(caches(&srv).await[1]["replicate"], false);

    // Delete: gone at once.
    let v = config_version(&srv).await;
    let r = admin(&srv, "DELETE", "/v1/caches/sessions", Value::Null).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(
        r.json(),
        json!({"config_version": v + 1, "deleted": "sessions"})
    );
    assert_eq!(names(&srv).await, ["default"]);
    let r = admin(&srv, "GET", "/v1/caches/sessions", Value::Null).await;
    assert_eq!(r.status, 404);
    srv.assert_no_errors(&[]);
}

#[tokio::test]
async fn definitions_export_and_import_with_replace_and_dry_run() {
    let srv = Env::new().start().await;
    put(
        &srv,
        "a",
        json!({"max_entries": 5, "replicate": false}),
        201,
    )
    .await;
    put(&srv, "b", json!({"default_expiry_s": 30}), 201).await;
    put(&srv, "default", json!({"max_item_size": 4096}), 201).await;

    // Exported as YAML, field by field, name first.
    let first = srv.dir.join("first.yaml");
    ok(&srv.cli(&["config", "export", "-f", first.to_str().unwrap()]));
    let first_text = std::fs::read_to_string(&first).unwrap();
    assert!(
        first_text.contains("cache:\n- name: a\n  max_entries: 5\n"),
        "{first_text}"
    );
    assert!(first_text.contains("- name: b\n"), "{first_text}");
    assert!(first_text.contains("max_item_size: 4096"), "{first_text}");
    let doc = admin(&srv, "GET", "/v1/config", Value::Null).await.json();
    assert_eq!(doc["cache"].as_array().unwrap().len(), 3, "{doc}");

    // Imported back: nothing changes.
    let out = ok(&srv.cli(&["config", "import", first.to_str().unwrap()]));
    assert!(out.starts_with("0 changes, 3 unchanged"), "{out}");

    // --replace with a document that lists only `a` (changed): b goes, the stored default
    // stays (the default cache always exists), live at once.
    let only_a = srv.dir.join("only-a.yaml");
    std::fs::write(&only_a, "cache:\n- name: a\n  max_entries: 6\n").unwrap();
    let v = config_version(&srv).await;
    let out = ok(&srv.cli(&["config", "import", "--replace", only_a.to_str().unwrap()]));
    assert!(out.contains("update cache a"), "{out}");
    assert!(out.contains("delete cache b"), "{out}");
    assert!(!out.contains("default"), "{out}");
    assert!(out.contains("2 changes"), "{out}");
    assert_eq!(config_version(&srv).await, v + 1, "one transaction");
    let live = caches(&srv).await;
    assert_eq!(names(&srv).await, ["a", "default"]);
    assert_eq!(live[0]["max_entries"], 6);
    assert_eq!(live[0]["replicate"], true, "replaced, not merged");
    assert_eq!(live[1]["max_item_size"], 4096);
    assert_eq!(live[1]["builtin"], false);

    // A dry run changes nothing.
    let v = config_version(&srv).await;
    let out = ok(&srv.cli(&["config", "import", "--dry-run", first.to_str().unwrap()]));
    assert!(out.contains("would create cache b"), "{out}");
    assert!(out.contains("would update cache a"), "{out}");
    assert_eq!(config_version(&srv).await, v);
    assert_eq!(names(&srv).await, ["a", "default"]);

    // Validated in full: one bad definition, and the good one beside it is not written.
    let bad = json!({"cache": [
        {"name": "c"},
        {"name": "d", "max_item_size": 0},
    ]});
    let r = admin(&srv, "POST", "/v1/config", bad).await;
    assert_eq!(r.status, 400, "{}", text(&r));
    assert!(text(&r).contains("max_item_size"), "{}", text(&r));
    let r = admin(
        &srv,
        "POST",
        "/v1/config",
        json!({"cache": [{"name": "c", "max_entires": 3}]}),
    )
    .await;
    assert_eq!(r.status, 400, "{}", text(&r));
    assert!(text(&r).contains("max_entires"), "{}", text(&r));
    let r = admin(
        &srv,
        "POST",
        "/v1/config",
        json!({"cache": [{"name": "c"}, {"name": "c"}]}),
    )
    .await;
    assert_eq!(r.status, 400, "{}", text(&r));
    assert!(text(&r).contains("listed twice"), "{}", text(&r));
    assert_eq!(config_version(&srv).await, v);
    assert_eq!(names(&srv).await, ["a", "default"]);

    // The first export imported: back as it was, and exported again the same.
    let out = ok(&srv.cli(&["config", "import", first.to_str().unwrap()]));
    assert!(out.contains("create cache b"), "{out}");
    assert!(out.contains("update cache a"), "{out}");
    assert_eq!(names(&srv).await, ["a", "b", "default"]);
    assert_eq!(caches(&srv).await[1]["default_expiry_s"], 30);
    let second = srv.dir.join("second.yaml");
    ok(&srv.cli(&["config", "export", "-f", second.to_str().unwrap()]));
    assert_eq!(
        export_body(&std::fs::read_to_string(&second).unwrap()),
        export_body(&first_text)
    );
    srv.assert_no_errors(&[]);
}

/// Waits until `srv`'s live cache `name` has `field` = `want` (`Value::Null`: no such cache).
async fn live(srv: &Server, name: &str, field: &str, want: Value) {
    api::has(srv, "caches", "cache", name, field, want).await
}

#[tokio::test]
async fn a_definition_change_reaches_the_other_server_live() {
    let db = PgDatabase::create();
    let url = format!("{:?}", db.url);
    let secret = cluster_secret("live");
    let a = Env::new().bus_member(&url, "a", &secret).start().await;
    let b = Env::new().bus_member(&url, "b", &secret).start().await;
    linked(&a, &["b"]).await;
    linked(&b, &["a"]).await;

    put(&a, "orders", json!({"max_entries": 77}), 201).await;
    live(&b, "orders", "max_entries", json!(77)).await;
    put(&b, "orders", json!({"max_entries": 78}), 200).await;
    live(&a, "orders", "max_entries", json!(78)).await;
    put(&a, "default", json!({"default_expiry_s": 5}), 201).await;
    live(&b, "default", "default_expiry_s", json!(5)).await;
    live(&b, "default", "builtin", json!(false)).await;
    let r = admin(&a, "DELETE", "/v1/caches/orders", Value::Null).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    live(&b, "orders", "name", Value::Null).await;
    // An import through B reaches A too.
    let r = admin(
        &b,
        "POST",
        "/v1/config",
        json!({"cache": [{"name": "imported", "replicate": false}]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    live(&a, "imported", "replicate", json!(false)).await;
    for s in [&a, &b] {
        s.assert_no_errors(&[]);
    }
    let _ = std::fs::remove_file(secret);
}

#[tokio::test]
async fn a_server_restarted_with_the_store_down_boots_its_caches_from_the_snapshot() {
    let pg = PrivatePg::start();
    let url = format!("{:?}", pg.url());
    let srv = Env::new().set("store", "url", &url).start().await;
    put(&srv, "sessions", json!({"max_entries": 321}), 201).await;
    let v = config_version(&srv).await;
    let snapshot = srv.dir.join("snapshot.json");
    eventually(
        Duration::from_secs(20),
        "the snapshot with the definition",
        || {
            let text = std::fs::read_to_string(&snapshot).unwrap_or_default();
            async move {
                (text.contains(&format!("\"config_version\":{v}"))
                    && text.contains("\"name\":\"sessions\""))
                .then_some(())
            }
        },
    )
    .await;
    pg.stop();
    // The only path to the definition now is the snapshot, applied at start.
    let srv = srv.restart().await;
    assert!(
        srv.log().contains("serving the on-disk snapshot"),
        "{}",
        srv.log()
    );
    let r = admin(&srv, "GET", "/v1/caches/sessions", Value::Null).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(r.json()["max_entries"], 321);
    assert_eq!(r.json()["builtin"], false);
}
