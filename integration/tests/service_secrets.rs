//! `self.secrets[name]` against a real server and real workers: a secret's `services`
//! patterns decide which services read it (PermissionError for the others, KeyError for an
//! unknown name), a change of readers or value applies to the next read without a restart,
//! the admin API, the CLI and export/import carry `services`, and no listing shows a value.

use oxbus_integration::api::{admin, ok, text};
use oxbus_integration::*;
use serde_json::{Value, json};
use std::time::Duration;

/// The same reader deployed under two names: `crm.read` and `billing.read`. The payload
/// says which secret and how (`item`, `get`, `in`); the answer is the value or the
/// exception's type and message.
const SERVICE: &str = r#"from oxbus import Service


def read(svc):
    p = svc.request.payload
    name = p['name']
    try:
        if p.get('how') == 'get':
            value = svc.secrets.get(name, 'DEFAULT')
        elif p.get('how') == 'in':
            value = name in svc.secrets
        else:
            value = svc.secrets[name]
    except Exception as e:
        svc.response.payload = {'error': type(e).__name__, 'message': str(e)}
        return
    svc.response.payload = {'value': value}


class CrmRead(Service):
    name = 'crm.read'

    def handle(self):
        read(self)


class BillingRead(Service):
    name = 'billing.read'

    def handle(self):
        read(self)
"#;

fn env() -> Env {
    Env::new()
        .workers(2)
        .service("secretsvc.py", SERVICE)
        .channel("/crm", &["POST"], "crm.read")
        .channel("/billing", &["POST"], "billing.read")
}

async fn read(srv: &Server, path: &str, name: &str, how: &str) -> Value {
    let r = srv
        .post_json(path, &json!({"name": name, "how": how}))
        .await;
    assert_eq!(r.status, 200, "{path} {name}: {}", text(&r));
    r.json()
}

/// Waits until `path` reading `name` answers `want` (a change applies once this server's
/// sync has taken the new config version).
async fn until(srv: &Server, path: &str, name: &str, want: Value) {
    eventually(
        Duration::from_secs(15),
        &format!("{path} reading {name} to give {want}"),
        || {
            let want = want.clone();
            async move {
                let got = read(srv, path, name, "item").await;
                let same = match want.get("error") {
                    Some(e) => got.get("error") == Some(e),
                    None => got == want,
                };
                same.then_some(())
            }
        },
    )
    .await;
}

#[tokio::test]
async fn services_read_what_their_patterns_allow() {
    let srv = env().start().await;
    let pids = srv.worker_pids();
    assert_eq!(pids.len(), 2);

    // A secret without readers: nobody reads it; an unknown one is a KeyError.
    let r = admin(
        &srv,
        "PUT",
        "/v1/secrets/crm.key",
        json!({"value": "v-one"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", text(&r));
    until(&srv, "/crm", "crm.key", json!({"error": "PermissionError"})).await;
    let denied = read(&srv, "/crm", "crm.key", "item").await;
    assert!(
        denied["message"].as_str().unwrap().contains("crm.read")
            && denied["message"].as_str().unwrap().contains("crm.key"),
        "{denied}"
    );
    let unknown = read(&srv, "/crm", "nope", "item").await;
    assert_eq!(unknown["error"], "KeyError", "{unknown}");
    assert_eq!(
        read(&srv, "/crm", "nope", "get").await,
        json!({"value": "DEFAULT"})
    );
    assert_eq!(
        read(&srv, "/crm", "nope", "in").await,
        json!({"value": false})
    );

    // Readers only (the value is not sent again): crm.* may read it, billing may not.
    let r = admin(
        &srv,
        "PUT",
        "/v1/secrets/crm.key",
        json!({"services": ["crm.*"]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    until(&srv, "/crm", "crm.key", json!({"value": "v-one"})).await;
    assert_eq!(
        read(&srv, "/crm", "crm.key", "in").await,
        json!({"value": true})
    );
    let other = read(&srv, "/billing", "crm.key", "item").await;
    assert_eq!(other["error"], "PermissionError", "{other}");
    assert_eq!(
        read(&srv, "/billing", "crm.key", "in").await,
        json!({"value": false})
    );
    // `.get` of a secret that exists but is not readable still refuses.
    assert_eq!(
        read(&srv, "/billing", "crm.key", "get").await["error"],
        "PermissionError"
    );

    // A new value keeps the readers; readers move to billing: both apply with no restart.
    let r = admin(
        &srv,
        "PUT",
        "/v1/secrets/crm.key",
        json!({"value": "v-two"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    until(&srv, "/crm", "crm.key", json!({"value": "v-two"})).await;
    let r = admin(
        &srv,
        "PUT",
        "/v1/secrets/crm.key",
        json!({"services": ["billing.read"]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    until(&srv, "/billing", "crm.key", json!({"value": "v-two"})).await;
    until(&srv, "/crm", "crm.key", json!({"error": "PermissionError"})).await;
    assert_eq!(srv.worker_pids(), pids, "no worker was restarted");

    // Refusals: readers of a secret that does not exist, bad patterns, an empty change.
    let r = admin(
        &srv,
        "PUT",
        "/v1/secrets/absent",
        json!({"services": ["x"]}),
    )
    .await;
    assert_eq!(r.status, 404, "{}", text(&r));
    let r = admin(
        &srv,
        "PUT",
        "/v1/secrets/crm.key",
        json!({"services": ["has space"]}),
    )
    .await;
    assert_eq!(r.status, 400, "{}", text(&r));
    assert!(text(&r).contains("has space"), "{}", text(&r));
    let r = admin(&srv, "PUT", "/v1/secrets/crm.key", json!({})).await;
    assert_eq!(r.status, 400, "{}", text(&r));

    // The list shows readers, never a value.
    let r = admin(&srv, "GET", "/v1/secrets", Value::Null).await;
    assert_eq!(
        r.json()["secrets"][0]["services"],
        json!(["billing.read"]),
        "{}",
        text(&r)
    );
    assert!(!text(&r).contains("v-two"), "{}", text(&r));

    // Deleted: a KeyError at the next read.
    let r = admin(&srv, "DELETE", "/v1/secrets/crm.key", Value::Null).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    until(&srv, "/billing", "crm.key", json!({"error": "KeyError"})).await;
    assert!(!srv.log().contains("v-two"), "a value in the log");
}

#[tokio::test]
async fn cli_and_export_import_keep_the_readers() {
    let srv = env().start().await;
    let file = srv.dir.join("value.txt");
    std::fs::write(&file, "from-cli\n").unwrap();
    let out = ok(&srv.cli(&[
        "secret",
        "set",
        "api",
        "--value-file",
        file.to_str().unwrap(),
        "--service",
        "crm.*",
        "--service",
        "ops.audit",
    ]));
    assert!(out.contains("secret api created"), "{out}");
    until(&srv, "/crm", "api", json!({"value": "from-cli"})).await;
    let out = ok(&srv.cli(&["secret", "list"]));
    assert!(out.contains("crm.*, ops.audit"), "{out}");
    assert!(!out.contains("from-cli"), "{out}");

    // Readers only, from the CLI: none given = no service.
    let out = ok(&srv.cli(&["secret", "services", "api", "--service", "billing.*"]));
    assert!(out.contains("readable by billing.*"), "{out}");
    until(&srv, "/billing", "api", json!({"value": "from-cli"})).await;
    until(&srv, "/crm", "api", json!({"error": "PermissionError"})).await;

    // The export carries the readers beside the sealed value; an import of it after the
    // secret was deleted brings both back.
    let doc = admin(&srv, "GET", "/v1/config", Value::Null).await.json();
    let exported = doc["secret"].clone();
    assert_eq!(exported[0]["name"], "api", "{doc}");
    assert_eq!(exported[0]["services"], json!(["billing.*"]), "{doc}");
    assert!(!doc.to_string().contains("from-cli"), "{doc}");
    let r = admin(&srv, "DELETE", "/v1/secrets/api", Value::Null).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    until(&srv, "/billing", "api", json!({"error": "KeyError"})).await;
    let r = admin(&srv, "POST", "/v1/config", json!({"secret": exported})).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    until(&srv, "/billing", "api", json!({"value": "from-cli"})).await;
    assert_eq!(
        read(&srv, "/crm", "api", "item").await["error"],
        "PermissionError"
    );

    // The same document again is no change; other readers alone are one.
    let r = admin(&srv, "POST", "/v1/config", json!({"secret": exported})).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert!(text(&r).contains("\"unchanged\":1"), "{}", text(&r));
    let mut moved = exported.clone();
    moved[0]["services"] = json!(["crm.read"]);
    let r = admin(&srv, "POST", "/v1/config", json!({"secret": moved})).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert!(text(&r).contains("update"), "{}", text(&r));
    until(&srv, "/crm", "api", json!({"value": "from-cli"})).await;

    // Bad readers in a document: refused, naming them.
    let mut bad = exported;
    bad[0]["services"] = json!(["two words"]);
    let r = admin(&srv, "POST", "/v1/config", json!({"secret": bad})).await;
    assert_eq!(r.status, 400, "{}", text(&r));
    assert!(text(&r).contains("two words"), "{}", text(&r));

    // An entry without `services` (a merge) keeps the stored readers.
    let r = admin(
        &srv,
        "POST",
        "/v1/config",
        json!({"secret": [{"name": "api", "value": "from-import"}]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    until(&srv, "/crm", "api", json!({"value": "from-import"})).await;

    // Names of the server's own sealed credentials are refused, in the API and an import:
    // such a secret could open a connection's credential for services.
    for name in ["outgoing/rest/crm", "security/x", "Outgoing/sql/db"] {
        let path = format!("/v1/secrets/{}", name.replace('/', "%2F"));
        let r = admin(&srv, "PUT", &path, json!({"value": "x"})).await;
        assert_eq!(r.status, 400, "{name}: {}", text(&r));
        assert!(text(&r).contains("reserved"), "{name}: {}", text(&r));
        let doc = json!({"secret": [{"name": name, "value": "x"}]});
        let r = admin(&srv, "POST", "/v1/config", doc).await;
        assert_eq!(r.status, 400, "{name}: {}", text(&r));
        assert!(text(&r).contains("reserved"), "{name}: {}", text(&r));
    }
}
