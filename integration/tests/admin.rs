//! The admin API against the real binary: authentication, info, invoke, channel CRUD; each on
//! SQLite and on PostgreSQL.

use oxbus_integration::*;
use serde_json::{Value, json};

fn env() -> Env {
    Env::new().workers(1).with_test_services()
}

#[tokio::test]
async fn admin_api_requires_the_token_and_answers_with_it() {
    token_cycle(env(), "sqlite").await;
}

#[tokio::test]
async fn admin_api_requires_the_token_and_answers_with_it_on_postgres() {
    let (env, _db) = env().postgres_store();
    token_cycle(env, "postgres").await;
}

async fn token_cycle(env: Env, engine: &str) {
    let srv = env.start().await;
    let token = srv.admin_token();
    assert_eq!(token.len(), 64);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(srv.dir.join("admin.token"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the token file must be private");

    // No token, a wrong token, a token of the wrong length: 401 and a JSON error.
    for t in [None, Some("wrong"), Some(&token[..63])] {
        let r = srv.admin("GET", "/v1/info", t, b"").await;
        assert_eq!(r.status, 401, "{t:?}");
        assert!(r.json()["error"].as_str().unwrap().contains("token"));
        assert_eq!(r.header("www-authenticate").as_deref(), Some("Bearer"));
    }
    let r = srv
        .admin("POST", "/v1/invoke/test.echo", None, br#"{"a":1}"#)
        .await;
    assert_eq!(r.status, 401);

    let r = srv.admin("GET", "/v1/info", Some(&token), b"").await;
    assert_eq!(r.status, 200);
    let info = r.json();
    assert_eq!(info["store"], engine);
    assert_eq!(info["config_version"], 0);
    assert_eq!(info["workers"].as_array().unwrap().len(), 1);
    assert_eq!(info["ipc_protocol"], 2);

    let r = srv
        .admin("POST", "/v1/invoke/test.echo", Some(&token), br#"{"a":1}"#)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"a": 1, "ok": true}));
    assert_eq!(r.cid().len(), 20);
    let r = srv
        .admin("POST", "/v1/invoke/no.such.service", Some(&token), b"{}")
        .await;
    assert_eq!(r.status, 404);
    let r = srv
        .admin("POST", "/v1/invoke/test.echo", Some(&token), b"{not json")
        .await;
    assert_eq!(r.status, 400);

    let r = srv.admin("GET", "/v1/services", Some(&token), b"").await;
    assert_eq!(r.status, 200);
    let names: Vec<String> = r.json()["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(names.contains(&"test.echo".to_owned()), "{names:?}");

    let r = srv.admin("GET", "/v1/modules", Some(&token), b"").await;
    assert_eq!(r.json(), json!({"modules": []}));
    let r = srv
        .admin("GET", "/v1/modules/nope", Some(&token), b"")
        .await;
    assert_eq!(r.status, 404);
    let r = srv.admin("GET", "/v1/nothing", Some(&token), b"").await;
    assert_eq!(r.status, 404);
    srv.assert_no_errors(&[]);
}

#[tokio::test]
async fn channels_are_created_and_deleted_live() {
    channels_cycle(env()).await;
}

#[tokio::test]
async fn channels_are_created_and_deleted_live_on_postgres() {
    let (env, _db) = env().postgres_store();
    channels_cycle(env).await;
}

async fn channels_cycle(env: Env) {
    let srv = env.start().await;
    let token = srv.admin_token();
    assert_eq!(srv.get("/live/7/x").await.status, 404);
    let ch = json!({"name": "live", "url_path": "/live/{item_id}/{name}", "methods": ["GET"], "service": "test.params"});
    let r = srv
        .admin(
            "POST",
            "/v1/channels",
            Some(&token),
            ch.to_string().as_bytes(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    // Answers at once, with its path parameters.
    let r = srv.get("/live/7/x").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["item_id"], 7);

    // A clash with a server.toml channel and a duplicate name: 409; nonsense: 400; nothing
    // changes.
    let clash = json!({"name": "clash", "url_path": "/echo", "methods": ["POST"], "service": "x"});
    let before =
        srv.admin("GET", "/v1/info", Some(&token), b"").await.json()["config_version"].clone();
    for (bad, status) in [
        (clash.to_string(), 409),
        (ch.to_string(), 409),
        ("{\"url_path\": \"nope\", \"service\": \"x\"}".into(), 400),
        ("[]".into(), 400),
    ] {
        let r = srv
            .admin("POST", "/v1/channels", Some(&token), bad.as_bytes())
            .await;
        assert_eq!(
            r.status,
            status,
            "{bad}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    let after =
        srv.admin("GET", "/v1/info", Some(&token), b"").await.json()["config_version"].clone();
    assert_eq!(before, after);
    assert_eq!(srv.post_json("/echo", &json!({"a": 1})).await.status, 200);

    let list = srv
        .admin("GET", "/v1/channels", Some(&token), b"")
        .await
        .json();
    let live: Vec<_> = list["channels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["source"] == "store")
        .collect();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0]["name"], "live");

    // Read one, update it (live at once), refuse a bad update without changing anything.
    let one = srv
        .admin("GET", "/v1/channels/live", Some(&token), b"")
        .await;
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["url_path"], "/live/{item_id}/{name}");
    let moved = json!({"url_path": "/moved/{item_id}/{name}", "methods": ["GET"], "service": "test.params"});
    let r = srv
        .admin(
            "PUT",
            "/v1/channels/live",
            Some(&token),
            moved.to_string().as_bytes(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(srv.get("/live/7/x").await.status, 404);
    assert_eq!(srv.get("/moved/7/x").await.json()["item_id"], 7);
    let v = srv.admin("GET", "/v1/info", Some(&token), b"").await.json()["config_version"].clone();
    for (name, bad, status) in [
        (
            "live",
            json!({"url_path": "/echo", "methods": ["POST"], "service": "x"}),
            409,
        ),
        (
            "live",
            json!({"name": "other", "url_path": "/o", "service": "x"}),
            400,
        ),
        ("nope", json!({"url_path": "/n", "service": "x"}), 404),
    ] {
        let r = srv
            .admin(
                "PUT",
                &format!("/v1/channels/{name}"),
                Some(&token),
                bad.to_string().as_bytes(),
            )
            .await;
        assert_eq!(
            r.status,
            status,
            "{bad}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    assert_eq!(
        srv.admin("GET", "/v1/info", Some(&token), b"").await.json()["config_version"],
        v
    );
    assert_eq!(srv.get("/moved/7/x").await.status, 200);

    // server.toml's channels are read-only here.
    let r = srv
        .admin("DELETE", "/v1/channels/%2Fecho", Some(&token), b"")
        .await;
    assert_eq!(
        r.status, 409,
        "server.toml's channels are changed in server.toml"
    );
    let r = srv
        .admin("DELETE", "/v1/channels/live", Some(&token), b"")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(srv.get("/live/7/x").await.status, 404);
    let r = srv
        .admin("DELETE", "/v1/channels/live", Some(&token), b"")
        .await;
    assert_eq!(r.status, 404);

    // A restarted server routes the store's channels again.
    let ch2 = json!({"name": "again", "url_path": "/again", "methods": [], "service": "test.pid"});
    assert_eq!(
        srv.admin(
            "POST",
            "/v1/channels",
            Some(&token),
            ch2.to_string().as_bytes()
        )
        .await
        .status,
        201
    );
    let srv = srv.restart().await;
    assert_eq!(srv.get("/again").await.status, 200);
}

#[tokio::test]
async fn channel_conflicts_are_409_in_api_words_and_one_channel_reads_whole() {
    let srv = env().start().await;
    let token = srv.admin_token();
    let post = |doc: Value| {
        let srv = &srv;
        let token = token.clone();
        async move {
            srv.admin(
                "POST",
                "/v1/channels",
                Some(&token),
                doc.to_string().as_bytes(),
            )
            .await
        }
    };
    let full = json!({
        "name": "orders", "url_path": "/orders/{id}", "methods": ["GET", "POST"],
        "service": "test.params", "security": null, "allow_from": ["127.0.0.1/32"],
        "rate_limit": {"requests": 100, "per_s": 1, "burst": 20},
        "params_priority": "msg-over-channel-params",
    });
    let mut create = full.clone();
    create.as_object_mut().unwrap().remove("security");
    let r = post(create.clone()).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.json().get("warning").is_none(), "{}", r.json());

    // One channel reads as the list and the create answer it: everything it has.
    let one = srv
        .admin("GET", "/v1/channels/orders", Some(&token), b"")
        .await
        .json();
    assert_eq!(one["allow_from"], json!(["127.0.0.1/32"]));
    assert_eq!(
        one["rate_limit"],
        json!({"requests": 100, "per_s": 1, "burst": 20})
    );
    assert_eq!(one["params_priority"], "msg-over-channel-params");
    assert_eq!(one["source"], "store");
    assert_eq!(one, r.json()["channel"]);
    let list = srv
        .admin("GET", "/v1/channels", Some(&token), b"")
        .await
        .json();
    let listed = list["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "orders")
        .unwrap()
        .clone();
    assert_eq!(listed, one);

    // The same path shape and a shared method: 409 naming the other channel and both paths.
    let r = post(
        json!({"name": "dup", "url_path": "/orders/{order}", "methods": ["POST"],
                        "service": "test.echo"}),
    )
    .await;
    assert_eq!(r.status, 409, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json()["error"],
        "url_path /orders/{order} (POST) answers the same requests (GET, POST) as channel \
         orders (url_path /orders/{id}): change the path or the methods, or change that channel"
    );
    // Against server.toml's channel: said so, without settings-file words.
    let r = post(json!({"name": "e2", "url_path": "/echo", "service": "test.echo"})).await;
    assert_eq!(r.status, 409);
    let e = r.json()["error"].as_str().unwrap().to_owned();
    assert!(e.contains("/echo") && e.contains("in server.toml"), "{e}");
    assert!(!e.contains("invalid setting"), "{e}");
    // Another method on the same path is no conflict.
    let r = post(
        json!({"name": "orders-del", "url_path": "/orders/{id}", "methods": ["DELETE"],
                        "service": "test.echo"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    // A JSON-RPC channel routes POST only: the message says so, not "any method".
    let r = post(json!({"name": "rpc2", "type": "jsonrpc", "url_path": "/rpc2"})).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let r = post(
        json!({"name": "rpc2-rest", "url_path": "/rpc2", "methods": ["POST"],
                        "service": "test.echo"}),
    )
    .await;
    assert_eq!(r.status, 409, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json()["error"],
        "url_path /rpc2 (POST) answers the same requests (POST) as channel rpc2 (url_path \
         /rpc2): change the path or the methods, or change that channel"
    );
    // A name taken: 409.
    let r = post(json!({"name": "orders", "url_path": "/elsewhere", "service": "test.echo"})).await;
    assert_eq!(r.status, 409);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("a channel named orders exists already"),
        "{}",
        r.json()
    );

    // A channel for a service nobody deployed: created, with a warning.
    let r = post(json!({"name": "later", "url_path": "/later", "service": "not.yet"})).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json()["warning"],
        "no service named not.yet is deployed: the channel answers 404 until it is"
    );
    assert_eq!(srv.get("/later").await.status, 404);
    srv.assert_no_errors(&[]);
}
