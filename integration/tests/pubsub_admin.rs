//! Operating the pub/sub broker (issue 20) against the real binary: topics, subscriptions and
//! endpoints through the admin API and `oxbus pubsub` (create, replace, read, delete; a
//! refusal naming the field; references that must exist; a topic in use kept), roles, the
//! audit log, export → import on a fresh server (idempotent, entries named in errors); and,
//! with the broker at work, a test publish, a subscription's queue, dead letters, requeue,
//! purge, figures and unsubscribe.

use oxbus_integration::api::{admin, config_version, ok, text};
use oxbus_integration::*;
use serde_json::{Value, json};
use std::time::Duration;

fn env() -> Env {
    Env::new().workers(1)
}

/// A request that must answer `status`; its document.
async fn must(srv: &Server, method: &str, path: &str, body: Value, status: u16) -> Value {
    let r = admin(srv, method, path, body.clone()).await;
    assert_eq!(r.status, status, "{method} {path} {body}: {}", text(&r));
    r.json()
}

/// A 400 whose message holds every one of `needles`; the config version does not move.
async fn refused(srv: &Server, method: &str, path: &str, body: Value, needles: &[&str]) {
    let v = config_version(srv).await;
    let doc = must(srv, method, path, body.clone(), 400).await;
    let msg = doc["error"].as_str().unwrap_or_default().to_owned();
    for n in needles {
        assert!(
            msg.contains(n),
            "{method} {path} {body}: {msg:?} lacks {n:?}"
        );
    }
    assert_eq!(config_version(srv).await, v, "nothing stored");
}

async fn token(srv: &Server, name: &str, role: &str) -> String {
    let doc = must(
        srv,
        "POST",
        "/v1/tokens",
        json!({"name": name, "role": role}),
        201,
    )
    .await;
    doc["token"].as_str().unwrap().to_owned()
}

fn names(list: &Value, key: &str, field: &str) -> Vec<String> {
    list[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} in {list}"))
        .iter()
        .map(|o| o[field].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_definitions_through_the_admin_api_the_cli_and_export_import() {
    let srv = env().start().await;

    // A topic: its name is the rest of the path.
    let doc = must(
        &srv,
        "PUT",
        "/v1/pubsub/topics/orders/new",
        json!({"max_depth_gd": 500}),
        201,
    )
    .await;
    assert_eq!(doc["created"], true);
    assert_eq!(doc["topic"]["name"], "/orders/new");
    assert_eq!(doc["topic"]["max_depth_gd"], 500);
    assert_eq!(doc["topic"]["has_gd"], true, "GD by default");
    let doc = must(
        &srv,
        "PUT",
        "/v1/pubsub/topics/orders/new",
        json!({"name": "/orders/new", "has_gd": false}),
        200,
    )
    .await;
    assert_eq!(doc["created"], false);
    let got = must(
        &srv,
        "GET",
        "/v1/pubsub/topics/orders/new",
        Value::Null,
        200,
    )
    .await;
    assert_eq!(got["has_gd"], false);
    assert_eq!(got["max_depth_gd"], 100_000, "a replace does not merge");
    must(
        &srv,
        "GET",
        "/v1/pubsub/topics/orders/old",
        Value::Null,
        404,
    )
    .await;

    // Refusals name the field.
    let t = "/v1/pubsub/topics/orders/bad";
    refused(
        &srv,
        "PUT",
        t,
        json!({"max_depth_gd": "lots"}),
        &["topic /orders/bad: max_depth_gd:"],
    )
    .await;
    refused(
        &srv,
        "PUT",
        t,
        json!({"max_dept_gd": 1}),
        &["max_dept_gd", "unknown field"],
    )
    .await;
    refused(
        &srv,
        "PUT",
        t,
        json!({"name": "/other"}),
        &["cannot be renamed"],
    )
    .await;
    refused(
        &srv,
        "PUT",
        t,
        json!({"max_depth_gd": 0}),
        &["max_depth_gd", "at least 1"],
    )
    .await;
    refused(
        &srv,
        "PUT",
        "/v1/pubsub/topics/a%20b",
        json!({}),
        &["topic name \"/a b\""],
    )
    .await;
    refused(&srv, "PUT", t, json!([1]), &["must be a JSON object"]).await;

    // A subscription: its topic must exist (unless a pattern), as its dead-letter topic.
    let s = "/v1/pubsub/subs/sk.adm-1";
    refused(
        &srv,
        "PUT",
        s,
        json!({"topic": "/nope", "delivery": {"type": "pull"}}),
        &["subscription sk.adm-1: topic: no topic named /nope"],
    )
    .await;
    refused(
        &srv,
        "PUT",
        s,
        json!({"topic": "/orders/new", "delivery": {"type": "pull"}, "dead_letter_topic": "/dl"}),
        &["dead_letter_topic: no topic named /dl"],
    )
    .await;
    refused(
        &srv,
        "PUT",
        s,
        json!({"topic": "/orders/new", "delivery": {"type": "pull"}, "batch_size": 0}),
        &["batch_size must be from 1"],
    )
    .await;
    refused(
        &srv,
        "PUT",
        s,
        json!({"topic": "/orders/new", "delivery": {"type": "fax"}}),
        &["subscription sk.adm-1: delivery:", "fax"],
    )
    .await;
    let doc = must(
        &srv,
        "PUT",
        s,
        json!({"topic": "/orders/new", "delivery": {"type": "pull"}}),
        201,
    )
    .await;
    let sub = &doc["subscription"];
    assert_eq!(sub["sub_key"], "sk.adm-1");
    assert_eq!(sub["created_by"], "admin:root");
    // Its topic cannot change (another topic is another queue): 409, nothing stored.
    let v = config_version(&srv).await;
    let doc409 = must(
        &srv,
        "PUT",
        s,
        json!({"topic": "/orders/*", "delivery": {"type": "pull"}}),
        409,
    )
    .await;
    assert!(
        doc409["error"]
            .as_str()
            .unwrap_or_default()
            .contains("its topic cannot change"),
        "{doc409}"
    );
    assert_eq!(config_version(&srv).await, v, "nothing stored");
    let created_at = sub["created_at_ms"].as_i64().unwrap();
    assert!(created_at > 1_700_000_000_000, "{sub}");
    // A pattern subscription needs no topic of that name.
    must(
        &srv,
        "PUT",
        "/v1/pubsub/subs/sk.adm-pattern",
        json!({"topic": "/orders/*", "delivery": {"type": "service", "service": "test.echo"}, "batch_size": 5}),
        201,
    )
    .await;
    // An edit keeps when and by whom it was made.
    let doc = must(
        &srv,
        "PUT",
        s,
        json!({"topic": "/orders/new", "delivery": {"type": "pull"}, "ack_timeout_ms": 5000}),
        200,
    )
    .await;
    assert_eq!(doc["subscription"]["created_at_ms"], created_at);
    assert_eq!(doc["subscription"]["created_by"], "admin:root");
    assert_eq!(doc["subscription"]["ack_timeout_ms"], 5000);

    // An endpoint: its security definition must exist; its lines are pub= / sub=.
    let e = "/v1/pubsub/endpoints/crm";
    refused(
        &srv,
        "PUT",
        e,
        json!({"security": "crm-basic"}),
        &["security: no security definition named crm-basic"],
    )
    .await;
    must(
        &srv,
        "POST",
        "/v1/security",
        json!({"name": "crm-basic", "type": "basic", "username": "crm", "password": "pw-crm-1"}),
        201,
    )
    .await;
    refused(
        &srv,
        "PUT",
        e,
        json!({"security": "crm-basic", "topic_patterns": ["publish=/orders/*"]}),
        &["must be pub=<pattern> or sub=<pattern>"],
    )
    .await;
    must(
        &srv,
        "PUT",
        e,
        json!({"security": "crm-basic", "topic_patterns": ["pub=/orders/*", "sub=/orders/new"]}),
        201,
    )
    .await;

    // Lists.
    let topics = must(&srv, "GET", "/v1/pubsub/topics", Value::Null, 200).await;
    assert_eq!(names(&topics, "topics", "name"), ["/orders/new"]);
    let subs = must(&srv, "GET", "/v1/pubsub/subs", Value::Null, 200).await;
    assert_eq!(
        names(&subs, "subscriptions", "sub_key"),
        ["sk.adm-1", "sk.adm-pattern"]
    );
    let eps = must(&srv, "GET", "/v1/pubsub/endpoints", Value::Null, 200).await;
    assert_eq!(names(&eps, "endpoints", "name"), ["crm"]);
    assert_eq!(
        must(&srv, "GET", e, Value::Null, 200).await["security"],
        "crm-basic"
    );

    // A topic a subscription names stays; a topic only a pattern matches does not.
    let doc = must(
        &srv,
        "DELETE",
        "/v1/pubsub/topics/orders/new",
        Value::Null,
        409,
    )
    .await;
    assert!(
        doc["error"].as_str().unwrap().contains("sk.adm-1")
            && !doc["error"].as_str().unwrap().contains("sk.adm-pattern"),
        "{doc}"
    );
    must(&srv, "PUT", "/v1/pubsub/topics/orders/free", json!({}), 201).await;
    must(
        &srv,
        "DELETE",
        "/v1/pubsub/topics/orders/free",
        Value::Null,
        200,
    )
    .await;
    must(
        &srv,
        "DELETE",
        "/v1/pubsub/topics/orders/free",
        Value::Null,
        404,
    )
    .await;

    // Roles: definitions and figures are a viewer's, a queue a deployer's, changes an admin's.
    let viewer = token(&srv, "ps-viewer", "viewer").await;
    let deployer = token(&srv, "ps-deployer", "deployer").await;
    for (tok, method, path, status) in [
        (&viewer, "GET", "/v1/pubsub/topics/orders/new", 200),
        (&viewer, "GET", "/v1/pubsub/subs", 200),
        (&viewer, "GET", "/v1/pubsub/subs/sk.adm-1/queue", 403),
        (&viewer, "PUT", "/v1/pubsub/topics/orders/x", 403),
        (&viewer, "POST", "/v1/pubsub/publish/orders/new", 403),
        (&deployer, "PUT", "/v1/pubsub/topics/orders/x", 403),
        (&deployer, "POST", "/v1/pubsub/subs/sk.adm-1/purge", 403),
        (&deployer, "DELETE", "/v1/pubsub/endpoints/crm", 403),
    ] {
        let r = srv.admin(method, path, Some(tok), b"{}").await;
        assert_eq!(r.status, status, "{method} {path}: {}", text(&r));
    }

    // The audit log names a topic by its name.
    let audit = must(
        &srv,
        "GET",
        "/v1/audit?object=pubsub_topic//orders/new",
        Value::Null,
        200,
    )
    .await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["refused", "update", "create"], "{audit}");

    // The CLI.
    let out = ok(&srv.cli(&[
        "pubsub",
        "topic",
        "put",
        "/cli/t",
        "--json",
        "{\"max_depth_gd\": 7}",
    ]));
    assert!(out.contains("topic /cli/t created"), "{out}");
    let out = ok(&srv.cli(&["pubsub", "topic", "get", "cli/t", "--output", "json"]));
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["max_depth_gd"],
        7
    );
    let out = ok(&srv.cli(&["pubsub", "topics"]));
    assert!(
        out.contains("/cli/t") && out.contains("/orders/new"),
        "{out}"
    );
    let out = ok(&srv.cli(&["pubsub", "subs"]));
    assert!(
        out.contains("sk.adm-pattern") && out.contains("service test.echo"),
        "{out}"
    );
    let out = ok(&srv.cli(&["pubsub", "endpoints"]));
    assert!(
        out.contains("crm-basic") && out.contains("pub=/orders/*"),
        "{out}"
    );
    let out = ok(&srv.cli(&["pubsub", "topic", "delete", "/cli/t"]));
    assert!(out.contains("topic /cli/t deleted"), "{out}");
    let bad = srv.cli(&[
        "pubsub",
        "topic",
        "put",
        "/cli/u",
        "--json",
        "{\"has_gd\": 3}",
    ]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("has_gd") && err.contains("400"), "{err}");

    // Export → import on a fresh server: the same definitions, then nothing to change.
    let doc = must(&srv, "GET", "/v1/config", Value::Null, 200).await;
    assert_eq!(doc["pubsub_topic"].as_array().unwrap().len(), 1, "{doc}");
    assert_eq!(doc["pubsub_subscription"].as_array().unwrap().len(), 2);
    assert_eq!(doc["pubsub_endpoint"][0]["name"], "crm");
    let fresh = env().start().await;
    let mut import = json!({
        "security": doc["security"].clone(),
        "pubsub_topic": doc["pubsub_topic"].clone(),
        "pubsub_subscription": doc["pubsub_subscription"].clone(),
        "pubsub_endpoint": doc["pubsub_endpoint"].clone(),
    });
    // The security definition's sealed secret is this server's key's: give it in plain.
    import["security"][0]["password"] = json!("pw-crm-1");
    import["security"][0]
        .as_object_mut()
        .unwrap()
        .remove("sealed");
    let report = must(&fresh, "POST", "/v1/config", import.clone(), 200).await;
    let kinds: Vec<String> = report["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            format!(
                "{} {} {}",
                c["kind"].as_str().unwrap(),
                c["name"].as_str().unwrap(),
                c["action"].as_str().unwrap()
            )
        })
        .collect();
    for want in [
        "pubsub_topic /orders/new create",
        "pubsub_subscription sk.adm-1 create",
        "pubsub_subscription sk.adm-pattern create",
        "pubsub_endpoint crm create",
    ] {
        assert!(kinds.iter().any(|k| k == want), "{want} not in {kinds:?}");
    }
    let copied = must(&fresh, "GET", "/v1/pubsub/subs/sk.adm-1", Value::Null, 200).await;
    assert_eq!(
        copied["created_at_ms"], created_at,
        "the export's time is kept"
    );
    let again = must(&fresh, "POST", "/v1/config", import.clone(), 200).await;
    assert_eq!(again["changes"].as_array().unwrap().len(), 0, "{again}");
    // An entry's error names the entry and the field; a reference must exist.
    let bad = json!({"pubsub_topic": [{"name": "/x", "max_depth_gd": -1}]});
    let r = must(&fresh, "POST", "/v1/config", bad, 400).await;
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("pubsub_topic[0]: topic /x: max_depth_gd:"),
        "{r}"
    );
    let bad = json!({"pubsub_subscription": [{"sub_key": "k", "topic": "/missing", "delivery": {"type": "pull"}}]});
    let r = must(&fresh, "POST", "/v1/config", bad, 400).await;
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("topic: no topic named /missing"),
        "{r}"
    );
    // With replace, a topic is deleted together with its subscriptions.
    let v = config_version(&fresh).await;
    let report = must(
        &fresh,
        "POST",
        "/v1/config?replace=true",
        json!({"security": import["security"].clone()}),
        200,
    )
    .await;
    assert!(config_version(&fresh).await > v, "{report}");
    let left = must(&fresh, "GET", "/v1/pubsub/topics", Value::Null, 200).await;
    assert!(left["topics"].as_array().unwrap().is_empty(), "{left}");

    // Deleting an endpoint.
    must(&srv, "DELETE", e, Value::Null, 200).await;
    must(&srv, "GET", e, Value::Null, 404).await;
    srv.assert_no_errors(&[]);
    fresh.assert_no_errors(&[]);
}

/// Needs the broker's publish and delivery (helpers A and B of issue 20).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_queue_operations_figures_and_test_publish() {
    let srv = env().start().await;
    must(&srv, "PUT", "/v1/pubsub/topics/adm/q", json!({}), 201).await;
    must(&srv, "PUT", "/v1/pubsub/topics/adm/q2", json!({}), 201).await;
    must(
        &srv,
        "PUT",
        "/v1/pubsub/subs/sk.adm-q",
        json!({"topic": "/adm/q", "delivery": {"type": "pull"}}),
        201,
    )
    .await;

    // A test publish: one message, then a list.
    let doc = must(
        &srv,
        "POST",
        "/v1/pubsub/publish/adm/q",
        json!({"data": "one", "priority": 7}),
        200,
    )
    .await;
    let first = doc["msg_ids"][0].as_str().unwrap().to_owned();
    assert!(first.starts_with("zpsm") && first.len() == 28, "{doc}");
    let doc = must(
        &srv,
        "POST",
        "/v1/pubsub/publish/adm/q",
        json!([{"data": {"n": 2}}, {"data": "three"}]),
        200,
    )
    .await;
    assert_eq!(doc["msg_ids"].as_array().unwrap().len(), 2);
    must(
        &srv,
        "POST",
        "/v1/pubsub/publish/adm/none",
        json!({"data": "x"}),
        404,
    )
    .await;
    let r = must(
        &srv,
        "POST",
        "/v1/pubsub/publish/adm/q",
        json!({"data": "x", "priority": 0}),
        400,
    )
    .await;
    assert!(r["error"].as_str().unwrap().contains("priority"), "{r}");
    let out = ok(&srv.cli(&["pubsub", "publish", "/adm/q", "--data", "four"]));
    assert!(out.trim().starts_with("zpsm"), "{out}");

    // The queue, in delivery order: priority first.
    let queue = eventually(Duration::from_secs(20), "4 messages queued", || async {
        let q = admin(
            &srv,
            "GET",
            "/v1/pubsub/subs/sk.adm-q/queue?limit=10",
            Value::Null,
        )
        .await;
        let q = q.json();
        (q["messages"].as_array().map_or(0, Vec::len) == 4).then_some(q)
    })
    .await;
    let m = &queue["messages"];
    assert_eq!(m[0]["msg_id"], first.as_str(), "{queue}");
    assert_eq!(m[0]["data"], "one");
    assert_eq!(m[1]["data"], r#"{"n":2}"#);
    let out = ok(&srv.cli(&["pubsub", "queue", "sk.adm-q"]));
    assert!(out.contains(&first) && out.contains("three"), "{out}");
    must(
        &srv,
        "GET",
        "/v1/pubsub/subs/sk.adm-q/queue?limit=0",
        Value::Null,
        400,
    )
    .await;
    must(
        &srv,
        "GET",
        "/v1/pubsub/subs/sk.nope/queue",
        Value::Null,
        404,
    )
    .await;

    // Figures.
    let topics = must(&srv, "GET", "/v1/pubsub/topics", Value::Null, 200).await;
    let t = topics["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "/adm/q")
        .unwrap()
        .clone();
    assert!(t["stats"]["last_seq"].as_i64().unwrap() >= 4, "{t}");
    assert_eq!(t["stats"]["subscriptions"], json!(["sk.adm-q"]), "{t}");
    let s = eventually(
        Duration::from_secs(20),
        "the subscription's depth",
        || async {
            let s = admin(&srv, "GET", "/v1/pubsub/subs/sk.adm-q", Value::Null)
                .await
                .json();
            (s["stats"]["depth"] == 4).then_some(s)
        },
    )
    .await;
    assert_eq!(s["stats"]["delivery"], "pull", "{s}");

    // Dead letters: none yet; a requeue of none is no error.
    let dead = must(
        &srv,
        "GET",
        "/v1/pubsub/subs/sk.adm-q/dead",
        Value::Null,
        200,
    )
    .await;
    assert_eq!(dead["messages"], json!([]));
    let r = must(
        &srv,
        "POST",
        "/v1/pubsub/subs/sk.adm-q/requeue",
        json!({}),
        200,
    )
    .await;
    assert_eq!(r["requeued"], 0);
    must(
        &srv,
        "POST",
        "/v1/pubsub/subs/sk.adm-q/requeue",
        json!({"ids": []}),
        400,
    )
    .await;

    // Purge: the queue is empty, and stays so.
    let r = must(
        &srv,
        "POST",
        "/v1/pubsub/subs/sk.adm-q/purge",
        Value::Null,
        200,
    )
    .await;
    assert_eq!(r["purged"], 4, "{r}");
    let q = must(
        &srv,
        "GET",
        "/v1/pubsub/subs/sk.adm-q/queue",
        Value::Null,
        200,
    )
    .await;
    assert_eq!(q["messages"], json!([]), "{q}");

    // Unsubscribe: the subscription goes, and then its topic may.
    let r = must(&srv, "DELETE", "/v1/pubsub/subs/sk.adm-q", Value::Null, 200).await;
    assert_eq!(r["deleted"], "sk.adm-q");
    must(&srv, "GET", "/v1/pubsub/subs/sk.adm-q", Value::Null, 404).await;
    must(&srv, "DELETE", "/v1/pubsub/subs/sk.adm-q", Value::Null, 404).await;
    must(&srv, "DELETE", "/v1/pubsub/topics/adm/q", Value::Null, 200).await;
    srv.assert_no_errors(&[]);
}

/// What pub/sub definitions name is checked against the store, deletes of what they name
/// are refused (409 naming them), a replaced subscription keeps its endpoint, and a deleted
/// topic's log goes with it (a topic made again under the name starts from seq 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_references_are_kept_and_deletes_clean_up() {
    let srv = env().start().await;
    must(&srv, "PUT", "/v1/pubsub/topics/ref/t", json!({}), 201).await;
    must(
        &srv,
        "POST",
        "/v1/security",
        json!({"name": "ref-b", "type": "basic", "username": "ref-u", "password": "pw-1"}),
        201,
    )
    .await;
    must(
        &srv,
        "PUT",
        "/v1/pubsub/endpoints/ref-crm",
        json!({"security": "ref-b", "topic_patterns": ["sub=/ref/*"]}),
        201,
    )
    .await;
    // One definition, one endpoint.
    let doc = must(
        &srv,
        "PUT",
        "/v1/pubsub/endpoints/ref-erp",
        json!({"security": "ref-b"}),
        409,
    )
    .await;
    let msg = doc.to_string();
    assert!(msg.contains("ref-crm") && msg.contains("ref-erp"), "{msg}");
    let doc = must(&srv, "DELETE", "/v1/security/ref-b", Value::Null, 409).await;
    assert!(doc.to_string().contains("ref-crm"), "{doc}");

    // A push subscription's connection must exist; a URL carries no credentials.
    refused(
        &srv,
        "PUT",
        "/v1/pubsub/subs/sk.ref-push",
        json!({"topic": "/ref/t", "delivery": {"type": "push", "conn": "ref-nope"}}),
        &["sk.ref-push", "delivery.conn", "ref-nope"],
    )
    .await;
    refused(
        &srv,
        "PUT",
        "/v1/pubsub/subs/sk.ref-push",
        json!({"topic": "/ref/t", "delivery": {"type": "push", "url": "http://u:secret@127.0.0.1:9/x"}}),
        &["sk.ref-push", "delivery.url"],
    )
    .await;
    let r = admin(
        &srv,
        "PUT",
        "/v1/outgoing/rest/ref-api",
        json!({"address": "http://127.0.0.1:9"}),
    )
    .await;
    assert!(r.status == 200 || r.status == 201, "{}", text(&r));
    must(
        &srv,
        "PUT",
        "/v1/pubsub/subs/sk.ref-push",
        json!({"topic": "/ref/t", "delivery": {"type": "push", "conn": "ref-api", "path": "/x"}}),
        201,
    )
    .await;
    let doc = must(
        &srv,
        "DELETE",
        "/v1/outgoing/rest/ref-api",
        Value::Null,
        409,
    )
    .await;
    assert!(doc.to_string().contains("sk.ref-push"), "{doc}");
    must(
        &srv,
        "DELETE",
        "/v1/pubsub/subs/sk.ref-push",
        Value::Null,
        200,
    )
    .await;

    // A replace that leaves the endpoint out keeps it; the endpoint then stays.
    must(
        &srv,
        "PUT",
        "/v1/pubsub/subs/sk.ref-pull",
        json!({"topic": "/ref/t", "delivery": {"type": "pull"}, "endpoint": "ref-crm"}),
        201,
    )
    .await;
    must(
        &srv,
        "PUT",
        "/v1/pubsub/subs/sk.ref-pull",
        json!({"topic": "/ref/t", "delivery": {"type": "pull"}, "batch_size": 5}),
        200,
    )
    .await;
    let s = must(&srv, "GET", "/v1/pubsub/subs/sk.ref-pull", Value::Null, 200).await;
    assert_eq!(s["endpoint"], "ref-crm", "{s}");
    assert_eq!(s["batch_size"], 5, "{s}");
    let doc = must(
        &srv,
        "DELETE",
        "/v1/pubsub/endpoints/ref-crm",
        Value::Null,
        409,
    )
    .await;
    assert!(doc.to_string().contains("sk.ref-pull"), "{doc}");

    // A topic in use stays; deleted, its log goes with it.
    for n in 0..2 {
        must(
            &srv,
            "POST",
            "/v1/pubsub/publish/ref/t",
            json!({"data": format!("m{n}")}),
            200,
        )
        .await;
    }
    let t = must(&srv, "GET", "/v1/pubsub/topics/ref/t", Value::Null, 200).await;
    assert_eq!(t["stats"]["last_seq"], 2, "{t}");
    // The gauges follow (refreshed in the background, read at scrape time).
    prom::scrape_until(&srv, "the pub/sub gauges", |p| {
        p.get("oxbus_pubsub_topic_depth", &[("topic", "/ref/t")]) == Some(2.0)
            && p.get("oxbus_pubsub_subscription_depth", &[("sub", "sk.ref-pull")]) == Some(2.0)
            && p.get(
                "oxbus_pubsub_subscription_in_flight",
                &[("sub", "sk.ref-pull")],
            ) == Some(0.0)
    })
    .await;
    must(&srv, "DELETE", "/v1/pubsub/topics/ref/t", Value::Null, 409).await;
    must(
        &srv,
        "DELETE",
        "/v1/pubsub/subs/sk.ref-pull",
        Value::Null,
        200,
    )
    .await;
    must(&srv, "DELETE", "/v1/pubsub/topics/ref/t", Value::Null, 200).await;
    must(&srv, "PUT", "/v1/pubsub/topics/ref/t", json!({}), 201).await;
    let t = must(&srv, "GET", "/v1/pubsub/topics/ref/t", Value::Null, 200).await;
    // Made again: its old messages went with the delete (nothing kept), and its seqs go on
    // from where they were (a seq is never used twice).
    assert_eq!(
        (&t["stats"]["last_seq"], &t["stats"]["depth_gd"]),
        (&json!(2), &json!(0)),
        "{t}"
    );
    // An import: a pubsub channel under channel_jsonrpc is refused, named; a replace that
    // drops a topic drops its log.
    let doc = must(
        &srv,
        "POST",
        "/v1/config",
        json!({"channel_jsonrpc": [{"type": "pubsub", "url_path": "/ref-ps"}]}),
        400,
    )
    .await;
    assert!(
        doc.to_string().contains("/ref-ps is a pubsub channel"),
        "{doc}"
    );
    must(
        &srv,
        "POST",
        "/v1/pubsub/publish/ref/t",
        json!({"data": "again"}),
        200,
    )
    .await;
    let t = must(&srv, "GET", "/v1/pubsub/topics/ref/t", Value::Null, 200).await;
    assert_eq!(
        (&t["stats"]["last_seq"], &t["stats"]["depth_gd"]),
        (&json!(3), &json!(1)),
        "{t}"
    );
    let mut export = must(&srv, "GET", "/v1/config", Value::Null, 200).await;
    export["pubsub_topic"] = json!([]);
    // The rest imported back as it is (its secrets sealed with this server's key).
    must(&srv, "POST", "/v1/config?replace=1", export, 200).await;
    must(&srv, "PUT", "/v1/pubsub/topics/ref/t", json!({}), 201).await;
    let t = must(&srv, "GET", "/v1/pubsub/topics/ref/t", Value::Null, 200).await;
    assert_eq!(
        (&t["stats"]["last_seq"], &t["stats"]["depth_gd"]),
        (&json!(3), &json!(0)),
        "{t}"
    );
    // Now unused, both go.
    must(
        &srv,
        "DELETE",
        "/v1/pubsub/endpoints/ref-crm",
        Value::Null,
        200,
    )
    .await;
    must(&srv, "DELETE", "/v1/security/ref-b", Value::Null, 200).await;
}
