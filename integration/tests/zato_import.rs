//! `oxbus zato import`: a Zato 3.2 enmasse export (tests/data/zato_enmasse_sample.yaml)
//! into a real server — the dry run changes nothing, the import creates what maps (a
//! channel then answers behind its basic auth definition), every object left out is
//! reported with its reason and the exit code says so, a second import changes nothing,
//! and a definition whose password the export lacks is imported once the server holds one.

use oxbus_integration::api::{admin, config_version, text};
use oxbus_integration::*;
use serde_json::{Value, json};
use std::process::{Command, Output};

const CRM_PASSWORD: &str = "crm-Passw0rd-from-env";

const MODULE: &str = r#"from oxbus import Service

class GetCustomer(Service):
    name = 'crm.customer.get'

    def handle(self):
        self.response.payload = {'customer': 'Ann'}
"#;

fn sample() -> String {
    repo_root()
        .join("integration/tests/data/zato_enmasse_sample.yaml")
        .display()
        .to_string()
}

/// `oxbus zato import ARGS` against `srv`, with the variable the sample's
/// `{Zato_Enmasse_Env.CRM_API_PASSWORD}` names.
fn zato(srv: &Server, args: &[&str]) -> Output {
    Command::new(oxbus_bin())
        .args(["zato", "import"])
        .args(args)
        .env(
            "OXBUS_URL",
            format!("http://127.0.0.1:{}", srv.admin_port()),
        )
        .env("OXBUS_TOKEN", srv.admin_token())
        .env("CRM_API_PASSWORD", CRM_PASSWORD)
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The run left objects out (exit code 2) and printed nothing on standard error.
fn skipped_some(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(2),
        "stdout: {}\nstderr: {}",
        stdout(out),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(out)
}

async fn status(srv: &Server, path: &str) -> u16 {
    admin(srv, "GET", path, Value::Null).await.status
}

#[tokio::test]
async fn a_zato_export_is_imported_and_what_does_not_map_is_reported() {
    let srv = Env::new().workers(1).start().await;
    let r = admin(
        &srv,
        "POST",
        "/v1/modules",
        json!({"modules": [{"name": "crm", "source": MODULE}]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let v = config_version(&srv).await;

    // The dry run: the report and the plan, and nothing changed.
    let out = skipped_some(&zato(&srv, &["--dry-run", &sample()]));
    for line in [
        "security \"CRM API users\" -> security CRM-API-users",
        "channel_rest \"/api/customers/get\" -> channel_rest /api/customers/get",
        "outconn_sql \"crm.db\" -> outgoing_sql crm.db",
        "scheduler \"crm.sync\" -> job crm.sync",
        "would create security CRM-API-users",
        "would create channel_rest /api/customers/get",
        "would create outgoing_rest billing",
        "would create job reports.nightly",
        "(dry run: nothing applied)",
        "channel_soap \"legacy.soap\": soap transport: Oxbus has no SOAP channels",
        "security \"legacy.ntlm\": Oxbus has no NTLM security",
        "my_custom_things \"not-a-zato-kind\": unknown top-level key",
        "outconn_sql \"reports.oracle\": engine oracle",
    ] {
        assert!(out.contains(line), "{line:?} missing in:\n{out}");
    }
    assert_eq!(config_version(&srv).await, v, "a dry run changes nothing");
    assert_eq!(status(&srv, "/v1/security/CRM-API-users").await, 404);

    // The import, as JSON.
    let out = skipped_some(&zato(&srv, &["--output", "json", &sample()]));
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(report["dry_run"], false);
    assert_eq!(report["mapped"].as_array().unwrap().len(), 16, "{report:#}");
    let skipped = report["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 11, "{report:#}");
    let reason = |kind: &str, name: &str| {
        skipped
            .iter()
            .find(|s| s["zato_kind"] == kind && s["zato_name"] == name)
            .and_then(|s| s["reason"].as_str())
            .unwrap_or_else(|| panic!("{kind} {name} not reported: {report:#}"))
            .to_owned()
    };
    assert!(reason("security", "ops.basic").contains("never exports passwords"));
    assert!(reason("channel_rest", "ops.status").contains("\"ops.basic\" is not imported"));
    assert!(reason("scheduler", "broken.interval").contains("needs an interval"));
    assert!(reason("pubsub_topic", "/orders/new").contains("pub/sub"));
    let changes = report["import"]["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 15, "{report:#}");
    assert_eq!(config_version(&srv).await, v + 1, "one transaction");

    // Every mapped object is there, through the admin API.
    for path in [
        "/v1/security/CRM-API-users",
        "/v1/security/partner.apikey",
        "/v1/outgoing/rest/CRM-backend",
        "/v1/outgoing/rest/billing",
        "/v1/outgoing/rest/forms",
        "/v1/outgoing/sql/crm.db",
        "/v1/outgoing/redis/default",
        "/v1/outgoing/amqp/orders.out",
        "/v1/jobs/crm.sync",
        "/v1/jobs/reports.nightly",
        "/v1/caches/crm.sessions",
    ] {
        assert_eq!(status(&srv, path).await, 200, "{path}");
    }
    for path in [
        "/v1/security/ops.basic",
        "/v1/security/legacy.ntlm",
        "/v1/jobs/broken.interval",
    ] {
        assert_eq!(status(&srv, path).await, 404, "{path}");
    }
    let config = admin(&srv, "GET", "/v1/config", Value::Null).await.json();
    let channels: Vec<&str> = config["channel_rest"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        channels,
        ["/api/customers/get", "partner.orders", "legacy.xml"]
    );
    let billing = admin(&srv, "GET", "/v1/outgoing/rest/billing", Value::Null)
        .await
        .json();
    assert_eq!(billing["auth"]["type"], "oauth2", "{billing}");
    assert_eq!(billing["has_secret"], true, "{billing}");
    let job = admin(&srv, "GET", "/v1/jobs/reports.nightly", Value::Null)
        .await
        .json();
    assert_eq!(job["cron"], "0 2 * * *", "{job}");

    // The channel serves behind the basic auth definition with the password the
    // environment gave, and refuses without it.
    let basic = |user: &str, pw: &str| {
        use base64::Engine;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"))
        )
    };
    let r = srv.get("/api/customers/7").await;
    assert_eq!(r.status, 401);
    let good = basic("crm", CRM_PASSWORD);
    let r = srv
        .request("GET", "/api/customers/7", &[("authorization", &good)], b"")
        .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(r.json()["customer"], "Ann");
    let key = [("x-api-key", "pr0ven-partner-key")];
    let r = srv
        .request("POST", "/api/partner/orders", &key, b"{}")
        .await;
    assert_eq!(r.status, 200, "{}", text(&r));

    // Again: nothing changes.
    let out = skipped_some(&zato(&srv, &[&sample()]));
    assert!(out.contains("0 changes, "), "{out}");
    assert_eq!(config_version(&srv).await, v + 1);

    // Once the server holds ops.basic (made by hand, with its password), the import maps it
    // without one, keeping the server's, and its channel comes too.
    let r = admin(
        &srv,
        "POST",
        "/v1/security",
        json!({"name": "ops.basic", "type": "basic", "username": "ops", "password": "ops-Passw0rd"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", text(&r));
    let out = skipped_some(&zato(&srv, &[&sample()]));
    assert!(
        out.contains("security \"ops.basic\" -> security ops.basic"),
        "{out}"
    );
    assert!(
        out.contains("the password security ops.basic holds on this server is kept"),
        "{out}"
    );
    assert!(out.contains("create channel_rest ops.status"), "{out}");
    let r = srv
        .request(
            "GET",
            "/ops/status",
            &[("authorization", &basic("ops", "ops-Passw0rd"))],
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    srv.assert_no_errors(&[]);
}

#[tokio::test]
async fn a_file_that_is_not_an_enmasse_export_is_refused_and_changes_nothing() {
    let srv = Env::new().workers(1).start().await;
    let v = config_version(&srv).await;
    let file = srv.dir.join("not-zato.yaml");
    for (content, says) in [
        (
            "channels:\n- url_path: /x\n",
            "not a Zato enmasse export: none of its keys (channels)",
        ),
        (
            "- a\n- b\n",
            "not a Zato enmasse export: expected a mapping",
        ),
        ("security: [\n", "not valid YAML or JSON"),
    ] {
        std::fs::write(&file, content).unwrap();
        let out = zato(&srv, &[file.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{content}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.starts_with("oxbus: error: ") && err.contains(says),
            "{content}: {err}"
        );
        assert!(out.stdout.is_empty());
    }
    // Everything maps: exit code 0.
    std::fs::write(
        &file,
        "channel_rest:\n- name: only\n  service: crm.customer.get\n  url_path: /only\n",
    )
    .unwrap();
    let out = zato(&srv, &[file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).contains("not mapped (0):"));
    assert_eq!(config_version(&srv).await, v + 1);
    srv.assert_no_errors(&[]);
}
