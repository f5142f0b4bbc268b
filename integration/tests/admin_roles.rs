//! Named admin identities (issue 18): API tokens with a role (`admin`, `deployer`, `viewer`)
//! created, listed and revoked through `/v1/tokens` and `oxbus token`; every admin endpoint's
//! allowed and refused calls per role (403 naming the role needed, nothing changed); tokens
//! shown once and stored hashed; a revoked token refused at once on every server of a
//! three-server cluster; while the store is down, a server's copy of the store's tokens
//! (refreshed every sync interval, so a revocation through another server reaches it)
//! still authenticates; a named token's deploys and secret changes are recorded under its
//! own name.

use oxbus_integration::*;
use serde_json::{Value, json};
use std::process::Command;
use std::time::Duration;

fn env() -> Env {
    Env::new().workers(1).with_test_services()
}

async fn call(srv: &Server, token: &str, method: &str, path: &str, body: &Value) -> Resp {
    let body = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    srv.admin(method, path, Some(token), &body).await
}

/// Creates a token as `by` (a token allowed to); returns the token.
async fn create_token(srv: &Server, by: &str, name: &str, role: &str) -> String {
    let r = call(
        srv,
        by,
        "POST",
        "/v1/tokens",
        &json!({"name": name, "role": role}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let doc = r.json();
    assert_eq!(doc["name"], name);
    assert_eq!(doc["role"], role);
    doc["token"].as_str().expect("the token").to_owned()
}

/// The SHA-256 of `s` as lower-case hex, as the store keeps a token.
fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The SQLite store's `admin_tokens` rows of `srv`: (name, role, token_hash, created_by).
async fn sqlite_tokens(srv: &Server) -> Vec<(String, String, String, String)> {
    use sqlx::ConnectOptions;
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(srv.dir.join("oxbus.db"))
        .read_only(true)
        .connect()
        .await
        .expect("open the server's SQLite store");
    let rows =
        sqlx::query_as("SELECT name, role, token_hash, created_by FROM admin_tokens ORDER BY name")
            .fetch_all(&mut conn)
            .await
            .expect("read admin_tokens");
    sqlx::Connection::close(conn).await.ok();
    rows
}

const MARK_MODULE: &str = "from oxbus import Service\n\nclass Mark(Service):\n    name = 'roles.mark'\n\n    def handle(self):\n        self.cache.default.set('marked', True)\n        self.response.payload = {'marked': True}\n";

/// Every admin endpoint: (method, path, body, the least role that may call it, the status
/// its first allowed call answers). Written from the API's documentation, independently of
/// the server's own table. The rows run in this order, each role's after the lesser roles'.
fn endpoints() -> Vec<(&'static str, &'static str, Value, &'static str, u16)> {
    // Each deploy stores a version (the same source would be left unchanged): the rollback
    // below needs an earlier one.
    let deploy =
        json!({"modules": [{"name": "rolesmod", "source": MARK_MODULE}], "skip_unchanged": false});
    let channel2 = json!({"name": "roles-ch2", "url_path": "/roles2", "methods": ["GET"], "service": "test.echo"});
    let channel = json!({"name": "roles-ch", "url_path": "/roles", "methods": ["GET", "POST"], "service": "test.echo"});
    let basic2 = json!({"name": "roles-basic2", "type": "basic", "username": "u", "password": "p"});
    let basic = json!({"name": "roles-basic", "type": "basic", "username": "u", "password": "p2"});
    let job = json!({"type": "interval_based", "service": "test.echo", "minutes": 30});
    vec![
        ("GET", "/v1/info", Value::Null, "viewer", 200),
        ("GET", "/v1/cluster", Value::Null, "viewer", 200),
        ("GET", "/v1/openapi", Value::Null, "viewer", 200),
        ("GET", "/v1/audit", Value::Null, "viewer", 200),
        ("GET", "/v1/services", Value::Null, "viewer", 200),
        ("GET", "/v1/services/stats", Value::Null, "viewer", 200),
        (
            "GET",
            "/v1/services/roles.mark/stats",
            Value::Null,
            "viewer",
            200,
        ),
        ("GET", "/v1/workers/restart", Value::Null, "viewer", 200),
        ("GET", "/v1/modules", Value::Null, "viewer", 200),
        ("GET", "/v1/modules/rolesmod", Value::Null, "viewer", 200),
        (
            "GET",
            "/v1/modules/rolesmod/versions",
            Value::Null,
            "viewer",
            200,
        ),
        (
            "GET",
            "/v1/modules/rolesmod/versions/1",
            Value::Null,
            "viewer",
            200,
        ),
        ("GET", "/v1/channels", Value::Null, "viewer", 200),
        ("GET", "/v1/channels/roles-ch", Value::Null, "viewer", 200),
        ("GET", "/v1/secrets", Value::Null, "viewer", 200),
        ("GET", "/v1/security", Value::Null, "viewer", 200),
        (
            "GET",
            "/v1/security/roles-basic",
            Value::Null,
            "viewer",
            200,
        ),
        ("GET", "/v1/caches", Value::Null, "viewer", 200),
        ("GET", "/v1/caches/rc", Value::Null, "viewer", 200),
        ("GET", "/v1/scheduler", Value::Null, "viewer", 200),
        ("GET", "/v1/jobs", Value::Null, "viewer", 200),
        ("GET", "/v1/jobs/roles-job", Value::Null, "viewer", 200),
        ("GET", "/v1/jobs/roles-job/runs", Value::Null, "viewer", 200),
        ("GET", "/v1/outgoing/rest", Value::Null, "viewer", 200),
        (
            "GET",
            "/v1/outgoing/rest/roles-out",
            Value::Null,
            "viewer",
            200,
        ),
        (
            "GET",
            "/v1/outgoing/rest/roles-out/stats",
            Value::Null,
            "viewer",
            200,
        ),
        ("GET", "/v1/outgoing/sql", Value::Null, "viewer", 200),
        (
            "GET",
            "/v1/outgoing/sql/roles-db",
            Value::Null,
            "viewer",
            200,
        ),
        (
            "GET",
            "/v1/outgoing/sql/roles-db/stats",
            Value::Null,
            "viewer",
            200,
        ),
        ("GET", "/v1/user-config", Value::Null, "viewer", 200),
        (
            "GET",
            "/v1/user-config/roles-uc",
            Value::Null,
            "viewer",
            200,
        ),
        // Secret material and application data: the export, cache contents.
        ("GET", "/v1/config", Value::Null, "deployer", 200),
        ("GET", "/v1/caches/rc/keys", Value::Null, "deployer", 200),
        ("GET", "/v1/caches/rc/keys/k1", Value::Null, "deployer", 200),
        // Deploys and calls.
        ("POST", "/v1/modules", deploy, "deployer", 200),
        ("POST", "/v1/invoke/roles.mark", json!({}), "deployer", 200),
        (
            "POST",
            "/v1/jobs/roles-job/execute",
            Value::Null,
            "deployer",
            200,
        ),
        (
            "POST",
            "/v1/modules/rolesmod/rollback",
            Value::Null,
            "deployer",
            200,
        ),
        (
            "DELETE",
            "/v1/modules/rolesmod",
            Value::Null,
            "deployer",
            200,
        ),
        // A ping makes the server call out: as a job's execute.
        (
            "POST",
            "/v1/outgoing/rest/roles-out/ping",
            Value::Null,
            "deployer",
            200,
        ),
        (
            "POST",
            "/v1/outgoing/sql/roles-db/ping",
            Value::Null,
            "deployer",
            200,
        ),
        // Every other change.
        ("POST", "/v1/channels", channel2, "admin", 201),
        ("PUT", "/v1/channels/roles-ch", channel, "admin", 200),
        (
            "DELETE",
            "/v1/channels/roles-ch2",
            Value::Null,
            "admin",
            200,
        ),
        (
            "PUT",
            "/v1/secrets/roles-secret",
            json!({"value": "v2"}),
            "admin",
            200,
        ),
        (
            "DELETE",
            "/v1/secrets/roles-secret",
            Value::Null,
            "admin",
            200,
        ),
        ("POST", "/v1/security", basic2, "admin", 201),
        ("PUT", "/v1/security/roles-basic", basic, "admin", 200),
        (
            "DELETE",
            "/v1/security/roles-basic2",
            Value::Null,
            "admin",
            200,
        ),
        (
            "PUT",
            "/v1/caches/rc",
            json!({"max_entries": 50}),
            "admin",
            200,
        ),
        ("DELETE", "/v1/caches/rc2", Value::Null, "admin", 200),
        (
            "PUT",
            "/v1/caches/rc/keys/k2",
            json!({"value": 2}),
            "admin",
            200,
        ),
        ("DELETE", "/v1/caches/rc/keys/k1", Value::Null, "admin", 200),
        ("POST", "/v1/caches/rc/clear", Value::Null, "admin", 200),
        ("PUT", "/v1/jobs/roles-job", job, "admin", 200),
        (
            "POST",
            "/v1/jobs/roles-job/disable",
            Value::Null,
            "admin",
            200,
        ),
        (
            "POST",
            "/v1/jobs/roles-job/enable",
            Value::Null,
            "admin",
            200,
        ),
        ("DELETE", "/v1/jobs/roles-job2", Value::Null, "admin", 200),
        (
            "PUT",
            "/v1/outgoing/rest/roles-out",
            json!({"address": "http://127.0.0.1:9", "timeout_ms": 500}),
            "admin",
            200,
        ),
        (
            "DELETE",
            "/v1/outgoing/rest/roles-out2",
            Value::Null,
            "admin",
            200,
        ),
        (
            "PUT",
            "/v1/outgoing/sql/roles-db",
            json!({"engine": "sqlite", "url": "sqlite:///tmp/oxbus-roles-out.db", "pool_max": 2}),
            "admin",
            200,
        ),
        (
            "DELETE",
            "/v1/outgoing/sql/roles-db2",
            Value::Null,
            "admin",
            200,
        ),
        (
            "PUT",
            "/v1/user-config/roles-uc",
            json!({"value": {"s": {"k": 2}}}),
            "admin",
            200,
        ),
        (
            "DELETE",
            "/v1/user-config/roles-uc2",
            Value::Null,
            "admin",
            200,
        ),
        ("POST", "/v1/workers/restart", Value::Null, "admin", 202),
        ("POST", "/v1/config?dry_run=1", json!({}), "admin", 200),
        ("GET", "/v1/tokens", Value::Null, "admin", 200),
        (
            "POST",
            "/v1/tokens",
            json!({"name": "made-by-admin", "role": "viewer"}),
            "admin",
            201,
        ),
        ("DELETE", "/v1/tokens/to-revoke", Value::Null, "admin", 200),
        // Not an endpoint: fail closed (an admin gets the 404).
        ("GET", "/v1/no-such-thing", Value::Null, "admin", 404),
        ("PATCH", "/v1/channels/roles-ch", Value::Null, "admin", 404),
    ]
}

/// Whether `r` is the 404 of a path no admin endpoint serves.
fn no_endpoint(r: &Resp) -> bool {
    r.status == 404 && String::from_utf8_lossy(&r.body).contains("no admin endpoint")
}

fn rank(role: &str) -> u8 {
    match role {
        "viewer" => 0,
        "deployer" => 1,
        "admin" => 2,
        other => panic!("no role {other}"),
    }
}

/// What the refused calls could have changed, as the root sees it: the whole config (export
/// and version), the tokens (their last use aside), the caches' contents, the job's runs.
async fn state(srv: &Server, root: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for path in [
        "/v1/config",
        "/v1/tokens",
        "/v1/caches/rc/keys",
        "/v1/caches/default/keys",
        "/v1/jobs/roles-job/runs",
        "/v1/modules",
    ] {
        let r = call(srv, root, "GET", path, &Value::Null).await;
        assert_eq!(
            r.status,
            200,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let mut doc = r.json();
        if let Some(list) = doc["tokens"].as_array_mut() {
            for t in list {
                t.as_object_mut().unwrap().remove("last_used_at_ms");
            }
        }
        out.push(doc);
    }
    let info = call(srv, root, "GET", "/v1/info", &Value::Null)
        .await
        .json();
    out.push(info["config_version"].clone());
    out
}

#[tokio::test]
async fn every_role_is_allowed_and_refused_as_the_role_table_says() {
    let srv = env().start().await;
    let root = srv.admin_token();
    // The objects the endpoints name.
    for (method, path, body, status) in [
        (
            "POST",
            "/v1/modules",
            json!({"modules": [{"name": "rolesmod", "source": MARK_MODULE}]}),
            200,
        ),
        (
            "POST",
            "/v1/channels",
            json!({"name": "roles-ch", "url_path": "/roles", "methods": ["GET"], "service": "test.echo"}),
            201,
        ),
        (
            "PUT",
            "/v1/secrets/roles-secret",
            json!({"value": "v1"}),
            201,
        ),
        (
            "POST",
            "/v1/security",
            json!({"name": "roles-basic", "type": "basic", "username": "u", "password": "p"}),
            201,
        ),
        ("PUT", "/v1/caches/rc", json!({"max_entries": 100}), 201),
        ("PUT", "/v1/caches/rc/keys/k1", json!({"value": 1}), 200),
        ("PUT", "/v1/caches/rc2", json!({"max_entries": 10}), 201),
        (
            "PUT",
            "/v1/jobs/roles-job",
            json!({"type": "interval_based", "service": "test.echo", "minutes": 60}),
            201,
        ),
        (
            "PUT",
            "/v1/jobs/roles-job2",
            json!({"type": "interval_based", "service": "test.echo", "minutes": 60}),
            201,
        ),
        (
            "POST",
            "/v1/tokens",
            json!({"name": "to-revoke", "role": "viewer"}),
            201,
        ),
        (
            "PUT",
            "/v1/outgoing/rest/roles-out",
            json!({"address": "http://127.0.0.1:9"}),
            201,
        ),
        (
            "PUT",
            "/v1/outgoing/rest/roles-out2",
            json!({"address": "http://127.0.0.1:9"}),
            201,
        ),
        (
            "PUT",
            "/v1/outgoing/sql/roles-db",
            json!({"engine": "sqlite", "url": "sqlite:///tmp/oxbus-roles-out.db"}),
            201,
        ),
        (
            "PUT",
            "/v1/outgoing/sql/roles-db2",
            json!({"engine": "sqlite", "url": "sqlite:///tmp/oxbus-roles-out.db"}),
            201,
        ),
        (
            "PUT",
            "/v1/user-config/roles-uc",
            json!({"value": {"s": {"k": 1}}}),
            201,
        ),
        (
            "PUT",
            "/v1/user-config/roles-uc2",
            json!({"value": {}}),
            201,
        ),
    ] {
        let r = call(&srv, &root, method, path, &body).await;
        assert_eq!(
            r.status,
            status,
            "{method} {path}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    let tokens: Vec<(&str, String)> = vec![
        (
            "viewer",
            create_token(&srv, &root, "dashboard", "viewer").await,
        ),
        (
            "deployer",
            create_token(&srv, &root, "ci", "deployer").await,
        ),
        ("admin", create_token(&srv, &root, "ops", "admin").await),
    ];
    let names = [
        ("viewer", "dashboard"),
        ("deployer", "ci"),
        ("admin", "ops"),
    ];
    let name_of = |role: &str| names.iter().find(|(r, _)| *r == role).unwrap().1;

    // Refused first, while every object is there: 403 naming the role needed and the
    // token's, and nothing changed.
    for (role, token) in &tokens {
        let before = state(&srv, &root).await;
        let mut refused = 0;
        for (method, path, body, needed, _) in endpoints() {
            if rank(role) >= rank(needed) {
                continue;
            }
            refused += 1;
            let r = call(&srv, token, method, path, &body).await;
            assert_eq!(
                r.status,
                403,
                "{role} {method} {path}: {}",
                String::from_utf8_lossy(&r.body)
            );
            let shown = path.split('?').next().unwrap();
            assert_eq!(
                r.json()["error"],
                format!(
                    "{method} {shown} needs role {needed}; token '{}' has role {role}",
                    name_of(role)
                ),
            );
        }
        assert_eq!(
            state(&srv, &root).await,
            before,
            "a refused call of the {role} changed something"
        );
        match *role {
            "viewer" => assert!(refused > 25, "{refused}"),
            "deployer" => assert!(refused > 15, "{refused}"),
            _ => assert_eq!(refused, 0),
        }
    }

    // What a role may do, it may: the least role that may call an endpoint gets its success
    // status (the first call with an effect); a greater role's later call (which may find
    // the object gone) is neither refused nor a path no endpoint serves.
    for (role, token) in &tokens {
        for (method, path, body, needed, status) in endpoints() {
            if rank(role) < rank(needed) {
                continue;
            }
            let r = call(&srv, token, method, path, &body).await;
            let text = String::from_utf8_lossy(&r.body);
            if *role == needed {
                assert_eq!(r.status, status, "{role} {method} {path}: {text}");
                if status != 404 {
                    assert!(!no_endpoint(&r), "{role} {method} {path}: {text}");
                }
            } else {
                assert!(
                    r.status != 403 && r.status != 401 && !no_endpoint(&r),
                    "{role} {method} {path}: {} {text}",
                    r.status
                );
            }
        }
    }
    let viewer = &tokens[0].1;
    let deployer = &tokens[1].1;
    let r = call(&srv, viewer, "GET", "/v1/services", &Value::Null).await;
    assert_eq!(r.status, 200);
    let r = call(
        &srv,
        deployer,
        "POST",
        "/v1/modules",
        &json!({"modules": [{"name": "rolesmod", "source": MARK_MODULE}]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = call(&srv, deployer, "POST", "/v1/invoke/roles.mark", &json!({})).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json(), json!({"marked": true}));
    // The root (the admin token file) may do everything, as before.
    let r = call(&srv, &root, "GET", "/v1/no-such-thing", &Value::Null).await;
    assert_eq!(r.status, 404);
    // A token created by a token names it as its creator.
    let listed = call(&srv, &root, "GET", "/v1/tokens", &Value::Null)
        .await
        .json();
    let made = listed["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "made-by-admin")
        .cloned()
        .expect("made-by-admin listed");
    assert_eq!(made["created_by"], "ops");
    assert_eq!(made["role"], "viewer");
}

#[tokio::test]
async fn a_token_is_shown_once_stored_hashed_and_its_name_and_role_checked() {
    let srv = env().start().await;
    let root = srv.admin_token();
    let r = call(
        &srv,
        &root,
        "POST",
        "/v1/tokens",
        &json!({"name": "dash", "role": "viewer"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let created = r.json();
    let token = created["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("oxbus_") && token.len() == 70, "{token}");
    assert!(token[6..].bytes().all(|b| b.is_ascii_hexdigit()), "{token}");
    assert_eq!(created["created_by"], "root");
    assert!(created["created_at_ms"].as_i64().unwrap() > 0);
    let hash = sha256_hex(&token);

    // Listed without the token or its hash; never shown again.
    let list = call(&srv, &root, "GET", "/v1/tokens", &Value::Null).await;
    assert_eq!(list.status, 200);
    let text = String::from_utf8_lossy(&list.body).into_owned();
    assert!(!text.contains(&token) && !text.contains(&hash), "{text}");
    let doc = list.json();
    assert_eq!(doc["tokens"].as_array().unwrap().len(), 1);
    let t = &doc["tokens"][0];
    assert_eq!(
        (&t["name"], &t["role"], &t["created_by"]),
        (&json!("dash"), &json!("viewer"), &json!("root"))
    );
    assert_eq!(t["last_used_at_ms"], Value::Null);

    // The store's row holds the SHA-256, and no byte of the store holds the token.
    let rows = sqlite_tokens(&srv).await;
    assert_eq!(
        rows,
        vec![(
            "dash".to_owned(),
            "viewer".to_owned(),
            hash.clone(),
            "root".to_owned()
        )]
    );
    for f in ["oxbus.db", "oxbus.db-wal"] {
        if let Ok(bytes) = std::fs::read(srv.dir.join(f)) {
            assert!(
                !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
                "{f} holds the token"
            );
        }
    }

    // The token works, and its use is recorded.
    let r = call(&srv, &token, "GET", "/v1/info", &Value::Null).await;
    assert_eq!(r.status, 200);
    eventually(Duration::from_secs(10), "last use recorded", || async {
        let d = call(&srv, &root, "GET", "/v1/tokens", &Value::Null)
            .await
            .json();
        d["tokens"][0]["last_used_at_ms"].as_i64().map(drop)
    })
    .await;

    // Bad input: 400; the root's name and a taken name: 409. Nothing is created.
    for (body, status, says) in [
        (
            json!({"name": "dash", "role": "admin"}),
            409,
            "exists already",
        ),
        (json!({"name": "root", "role": "viewer"}), 409, "reserved"),
        (json!({"name": "Root", "role": "viewer"}), 409, "reserved"),
        (json!({"name": "ROOT", "role": "admin"}), 409, "reserved"),
        (
            json!({"name": "", "role": "viewer"}),
            400,
            "not a valid token name",
        ),
        (
            json!({"name": "a b", "role": "viewer"}),
            400,
            "not a valid token name",
        ),
        (
            json!({"name": "ci/x", "role": "viewer"}),
            400,
            "not a valid token name",
        ),
        (
            json!({"name": "żółw", "role": "viewer"}),
            400,
            "not a valid token name",
        ),
        (
            json!({"name": "x".repeat(201), "role": "viewer"}),
            400,
            "not a valid token name",
        ),
        (json!({"name": "ci", "role": "root"}), 400, "is not a role"),
        (json!({"name": "ci", "role": "Admin"}), 400, "is not a role"),
        (json!({"name": "ci", "role": 3}), 400, "expected"),
        (json!({"name": "ci"}), 400, "expected"),
        (
            json!({"name": "ci", "role": "viewer", "token": "mine"}),
            400,
            "unknown field",
        ),
        (json!(["ci", "viewer"]), 400, "expected"),
    ] {
        let r = call(&srv, &root, "POST", "/v1/tokens", &body).await;
        assert_eq!(
            r.status,
            status,
            "{body}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let msg = r.json()["error"].as_str().unwrap().to_owned();
        assert!(msg.contains(says), "{body}: {msg}");
    }
    let r = srv
        .admin("POST", "/v1/tokens", Some(&root), b"{not json")
        .await;
    assert_eq!(r.status, 400);
    let listed = call(&srv, &root, "GET", "/v1/tokens", &Value::Null)
        .await
        .json();
    assert_eq!(listed["tokens"].as_array().unwrap().len(), 1, "{listed}");

    // Unknown tokens: 401, with or without the prefix.
    for bad in [
        format!("oxbus_{}", "0".repeat(64)),
        token[..69].to_owned(),
        "oxbus_".into(),
    ] {
        let r = call(&srv, &bad, "GET", "/v1/info", &Value::Null).await;
        assert_eq!(r.status, 401, "{bad}");
        assert_eq!(r.header("www-authenticate").as_deref(), Some("Bearer"));
    }

    // Revoked: 401 at once; the root cannot be revoked; a second revoke is a 404.
    for name in ["root", "Root", "ROOT"] {
        let r = call(
            &srv,
            &root,
            "DELETE",
            &format!("/v1/tokens/{name}"),
            &Value::Null,
        )
        .await;
        assert_eq!(r.status, 409, "{name}");
    }
    let r = call(&srv, &root, "DELETE", "/v1/tokens/dash", &Value::Null).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = call(&srv, &token, "GET", "/v1/info", &Value::Null).await;
    assert_eq!(r.status, 401);
    let r = call(&srv, &root, "DELETE", "/v1/tokens/dash", &Value::Null).await;
    assert_eq!(r.status, 404);
    let listed = call(&srv, &root, "GET", "/v1/tokens", &Value::Null)
        .await
        .json();
    assert_eq!(listed, json!({"tokens": []}));

    // A token is never logged.
    assert!(!srv.log().contains(&token), "the log holds the token");
    assert!(!srv.log().contains(&hash), "the log holds the token's hash");
    srv.assert_no_errors(&[]);
}

/// Runs the CLI against `srv` with `token` (the way a CI pipeline passes its own).
fn cli_as(srv: &Server, token: &str, args: &[&str]) -> std::process::Output {
    Command::new(oxbus_bin())
        .args(args)
        .env(
            "OXBUS_URL",
            format!("http://127.0.0.1:{}", srv.admin_port()),
        )
        .env("OXBUS_TOKEN", token)
        .output()
        .unwrap()
}

#[tokio::test]
async fn oxbus_token_creates_lists_and_revokes_and_a_pipeline_uses_its_own() {
    let srv = env().start().await;
    let out = srv.cli(&["token", "create", "ci", "--role", "deployer"]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let token = stdout.trim().to_owned();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(token.starts_with("oxbus_"), "{stdout}");
    assert!(
        stderr.contains("token ci (role deployer) created") && stderr.contains("never again"),
        "{stderr}"
    );

    let out = srv.cli(&["token", "list"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ci") && text.contains("deployer") && text.contains("by root"),
        "{text}"
    );
    assert!(text.contains("last used never"), "{text}");
    assert!(!text.contains(&token));

    // The pipeline's token deploys and invokes; it may not manage tokens.
    let dir = srv.dir.join("pipeline");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("rolesmod.py");
    std::fs::write(&file, MARK_MODULE).unwrap();
    let out = cli_as(&srv, &token, &["deploy", file.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let out = cli_as(&srv, &token, &["invoke", "roles.mark"]);
    assert!(out.status.success(), "{out:?}");
    let out = cli_as(&srv, &token, &["token", "list"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("GET /v1/tokens needs role admin; token 'ci' has role deployer (HTTP 403)"),
        "{stderr}"
    );
    let out = srv.cli(&["token", "create", "bad name", "--role", "viewer"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a valid token name"),
        "{out:?}"
    );
    let out = srv.cli(&["token", "create", "x", "--role", "boss"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not a role"),
        "{out:?}"
    );

    let out = srv.cli(&["token", "revoke", "ci"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("token ci revoked"));
    let out = cli_as(&srv, &token, &["services"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("HTTP 401"),
        "{out:?}"
    );
    srv.assert_no_errors(&[]);
}

/// The store's row of token `name` on PostgreSQL: `role|token_hash`, `""` when none.
async fn pg_row(db: &PgDatabase, name: &str) -> String {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&db.url)
        .await
        .expect("connect to the test database");
    let row: Option<(String, String)> =
        sqlx::query_as("SELECT role, token_hash FROM admin_tokens WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut conn)
            .await
            .expect("read admin_tokens");
    conn.close().await.ok();
    row.map_or_else(String::new, |(role, hash)| format!("{role}|{hash}"))
}

#[tokio::test]
async fn a_revoked_token_stops_at_once_on_every_server_of_a_cluster() {
    let (first, db) = env().postgres_store();
    let url = format!("{:?}", db.url);
    let a = first.start().await;
    let b = env().set("store", "url", &url).start().await;
    let c = env().set("store", "url", &url).start().await;
    let servers = [&a, &b, &c];

    // Created through A, with A's root; every server knows it at once (it looks it up).
    let token = create_token(&a, &a.admin_token(), "ci", "deployer").await;
    assert_eq!(
        pg_row(&db, "ci").await,
        format!("deployer|{}", sha256_hex(&token))
    );
    for srv in servers {
        let r = call(srv, &token, "GET", "/v1/modules", &Value::Null).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let r = call(srv, &token, "GET", "/v1/tokens", &Value::Null).await;
        assert_eq!(r.status, 403);
        assert_eq!(
            r.json()["error"],
            "GET /v1/tokens needs role admin; token 'ci' has role deployer"
        );
    }
    // Listed through C (with C's root) as created through A.
    let listed = call(&c, &c.admin_token(), "GET", "/v1/tokens", &Value::Null)
        .await
        .json();
    assert_eq!(listed["tokens"][0]["name"], "ci");
    assert_eq!(listed["tokens"][0]["created_by"], "root");

    // Revoked through B: the very next request on each server is refused.
    let r = call(
        &b,
        &b.admin_token(),
        "DELETE",
        "/v1/tokens/ci",
        &Value::Null,
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    for srv in servers {
        let r = call(srv, &token, "GET", "/v1/modules", &Value::Null).await;
        assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(&r.body));
    }
    assert_eq!(pg_row(&db, "ci").await, "");
    for srv in servers {
        srv.assert_no_errors(&[]);
    }
}

async fn store_is(srv: &Server, state: &str) {
    eventually(
        Duration::from_secs(30),
        &format!("store {state}"),
        || async {
            let r = srv.get("/healthz").await;
            (r.status == 200 && r.json()["store"] == state).then_some(())
        },
    )
    .await;
}

/// The 503 of an API token a server cannot check (the store unreachable, the token not in its
/// copy): no store error, nothing about the token.
const STORE_DOWN: &str =
    "the config store is unreachable: this API token cannot be checked until it is back";

/// While the store is down, a token in this server's copy of the store's tokens still
/// authenticates with its role; one not in it gets 503 saying only that the store is
/// unreachable; token changes get the quick 503 of any change; the root token works as always.
/// Back, the store decides again: a revocation is seen at once.
#[tokio::test]
async fn while_the_store_is_down_the_tokens_seen_still_work_and_others_get_503() {
    let pg = PrivatePg::start();
    let url = format!("{:?}", pg.url());
    let srv = env().set("store", "url", &url).start().await;
    let root = srv.admin_token();
    let seen = create_token(&srv, &root, "seen", "viewer").await;
    let later = create_token(&srv, &root, "later", "viewer").await;
    let r = call(&srv, &seen, "GET", "/v1/jobs", &Value::Null).await;
    assert_eq!(r.status, 200);

    pg.stop();
    store_is(&srv, "degraded").await;
    // GET /v1/jobs is served from memory: only the token's check could need the store.
    let r = call(&srv, &seen, "GET", "/v1/jobs", &Value::Null).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = call(&srv, &seen, "POST", "/v1/invoke/test.echo", &json!({})).await;
    assert_eq!(r.status, 403, "the copy keeps the role");
    // Never in the store: it cannot be told from a token the copy has not caught up with.
    let unknown = format!("oxbus_{}", "0".repeat(64));
    let r = call(&srv, &unknown, "GET", "/v1/jobs", &Value::Null).await;
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json(), json!({ "error": STORE_DOWN }));
    let r = call(&srv, &root, "GET", "/v1/jobs", &Value::Null).await;
    assert_eq!(r.status, 200);
    // Token changes are not config, and still get the quick 503 of a change.
    for (method, path, body) in [
        (
            "POST",
            "/v1/tokens",
            json!({"name": "new", "role": "viewer"}),
        ),
        ("DELETE", "/v1/tokens/seen", Value::Null),
    ] {
        let r = call(&srv, &root, method, path, &body).await;
        assert_eq!(r.status, 503, "{method} {path}");
        let msg = r.json()["error"].as_str().unwrap().to_owned();
        assert!(
            msg.contains("changes are refused"),
            "{method} {path}: {msg}"
        );
    }

    pg.start_again();
    store_is(&srv, "ok").await;
    let r = call(&srv, &later, "GET", "/v1/jobs", &Value::Null).await;
    assert_eq!(r.status, 200);
    let r = call(&srv, &root, "DELETE", "/v1/tokens/seen", &Value::Null).await;
    assert_eq!(r.status, 200);
    let r = call(&srv, &seen, "GET", "/v1/jobs", &Value::Null).await;
    assert_eq!(r.status, 401);
    srv.assert_no_errors(&[]);
}

/// A token revoked through one server leaves the other servers' copies within one refresh
/// (`cluster.sync_interval_ms`), without their looking it up again: in a later outage it is
/// refused there, while a token still in the store keeps working.
#[tokio::test]
async fn a_token_revoked_through_one_server_is_refused_on_the_others_in_a_later_outage() {
    let pg = PrivatePg::start();
    let url = format!("{:?}", pg.url());
    let a = env().set("store", "url", &url).start().await;
    let b = env().set("store", "url", &url).start().await;
    let root_a = a.admin_token();
    let gone = create_token(&a, &root_a, "gone", "viewer").await;
    let kept = create_token(&a, &root_a, "kept", "viewer").await;
    // B looks both up: both are in its copy.
    for t in [&gone, &kept] {
        let r = call(&b, t, "GET", "/v1/jobs", &Value::Null).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }

    let r = call(&a, &root_a, "DELETE", "/v1/tokens/gone", &Value::Null).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // B's refresh drops it (and says so, by name); B is not asked about the token meanwhile.
    eventually(
        Duration::from_secs(30),
        "B dropped the revoked token from its copy",
        || async {
            b.log_lines("dropped from this server's copy")
                .iter()
                .any(|l| l.contains("gone"))
                .then_some(())
        },
    )
    .await;

    pg.stop();
    store_is(&b, "degraded").await;
    let r = call(&b, &gone, "GET", "/v1/jobs", &Value::Null).await;
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json(), json!({ "error": STORE_DOWN }));
    let r = call(&b, &kept, "GET", "/v1/jobs", &Value::Null).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    for srv in [&a, &b] {
        assert!(!srv.log().contains(&gone) && !srv.log().contains(&kept));
    }
    drop(pg);
}

/// A deploy's `deployed_by` and a secret's `updated_by` are a named token's own name, whatever
/// the body claims; the root's claim (the CLI's user name) is kept as before.
#[tokio::test]
async fn a_named_token_s_changes_are_recorded_under_its_own_name() {
    let srv = env().start().await;
    let root = srv.admin_token();
    let ci = create_token(&srv, &root, "ci", "deployer").await;
    let ops = create_token(&srv, &root, "ops", "admin").await;
    // A new version each time (the same source would be left unchanged, its deployer too).
    let deploy = |by: &str| json!({"modules": [{"name": "rolesmod", "source": MARK_MODULE}], "deployed_by": by, "skip_unchanged": false});
    let deployed_by = || async {
        let doc = call(&srv, &root, "GET", "/v1/modules", &Value::Null)
            .await
            .json();
        doc["modules"][0]["deployed_by"].clone()
    };
    let updated_by = || async {
        let doc = call(&srv, &root, "GET", "/v1/secrets", &Value::Null)
            .await
            .json();
        doc["secrets"][0]["updated_by"].clone()
    };

    let r = call(&srv, &ci, "POST", "/v1/modules", &deploy("root")).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(deployed_by().await, "ci");
    let r = call(&srv, &root, "POST", "/v1/modules", &deploy("alice")).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(deployed_by().await, "alice");

    let put = |by: &str| json!({"value": "v", "updated_by": by});
    let r = call(&srv, &ops, "PUT", "/v1/secrets/s1", &put("root")).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(updated_by().await, "ops");
    let r = call(&srv, &ops, "PUT", "/v1/secrets/s1", &json!({"value": "w"})).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(updated_by().await, "ops");
    let r = call(&srv, &root, "PUT", "/v1/secrets/s1", &put("alice")).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(updated_by().await, "alice");
    srv.assert_no_errors(&[]);
}
