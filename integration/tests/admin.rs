//! The admin API against the real binary: authentication, info, invoke, modules.
//! (Issue 3 is in progress: deploy and channel CRUD are not built yet.)

use oxbus_integration::*;
use serde_json::json;

#[tokio::test]
async fn admin_api_requires_the_token_and_answers_with_it() {
    let srv = Env::new().workers(1).with_test_services().start().await;
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
    assert_eq!(info["store"], "sqlite");
    assert_eq!(info["config_version"], 0);
    assert_eq!(info["workers"].as_array().unwrap().len(), 1);
    assert_eq!(info["ipc_protocol"], 1);

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
