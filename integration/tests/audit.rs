//! The audit log against the real binary: every kind of admin change recorded with its
//! identity, kind, name, action and digests (on SQLite and on PostgreSQL); no secret value
//! in any column of any row nor in the API's answer (nor its SHA-256); paging and filters; a
//! pickup deploy recorded as `pickup`; a deploy whose client hangs up still done and
//! recorded; a create credited with its own object only; a role refusal while the store is
//! down logged, not recorded. Retention pruning is tested on the store
//! (supervisor/tests/store.rs).

use oxbus_integration::api::{admin as call, ok};
use oxbus_integration::*;
use serde_json::{Value, json};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Values that must never reach the audit log.
const SECRET_VALUES: [&str; 6] = [
    "AUDIT-SECRET-VALUE-ONE-7f3a",
    "AUDIT-SECRET-VALUE-TWO-9c1d",
    "AUDIT-BASIC-PASSWORD-ONE-e4b2",
    "AUDIT-BASIC-PASSWORD-TWO-a8f6",
    "AUDIT-IMPORTED-SECRET-VALUE-5d0c",
    "AUDIT-APIKEY-VALUE-2b7e",
];

/// Lower-case hex SHA-256 of `v`.
fn sha256_hex(v: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(v.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `text` holds none of [`SECRET_VALUES`], nor the SHA-256 of one.
fn assert_no_secret(text: &str, place: &str) {
    for v in SECRET_VALUES {
        assert!(!text.contains(v), "{v} is in {place}:\n{text}");
        let h = sha256_hex(v);
        assert!(
            !text.contains(&h),
            "the SHA-256 of {v} is in {place}:\n{text}"
        );
    }
}

fn module(n: u32) -> String {
    format!(
        "from oxbus import Service\n\n\nclass A(Service):\n    name = 'aud.v'\n\n    def handle(self):\n        self.response.payload = {{'v': {n}}}\n"
    )
}

fn env() -> Env {
    Env::new().workers(1).with_test_services()
}

/// `method path` must answer `status`.
async fn change(srv: &Server, method: &str, path: &str, body: Value, status: u16) -> Resp {
    let r = call(srv, method, path, body).await;
    assert_eq!(
        r.status,
        status,
        "{method} {path}: {}",
        String::from_utf8_lossy(&r.body)
    );
    r
}

/// The audit entries of `object` (kind/name), oldest first.
async fn entries(srv: &Server, object: &str) -> Vec<Value> {
    let r = call(
        srv,
        "GET",
        &format!("/v1/audit?object={object}&limit=1000"),
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let mut e = r.json()["entries"].as_array().unwrap().clone();
    e.reverse();
    e
}

/// The entries of `object` as `action before? after?` lines, for one assertion each.
fn shape(e: &[Value]) -> Vec<String> {
    e.iter()
        .map(|e| {
            format!(
                "{} {} {}",
                e["action"].as_str().unwrap(),
                if e["before"].is_string() { "B" } else { "-" },
                if e["after"].is_string() { "A" } else { "-" },
            )
        })
        .collect()
}

/// A create, an update and a delete: digests absent / present as they should be, the
/// update's two differ and chain with the create's and the delete's.
fn check_crud(e: &[Value], object: &str) {
    assert_eq!(
        shape(e),
        ["create - A", "update B A", "delete B -"],
        "{object}: {e:#?}"
    );
    assert_eq!(e[1]["before"], e[0]["after"], "{object}");
    assert_ne!(e[1]["before"], e[1]["after"], "{object}");
    assert_eq!(e[2]["before"], e[1]["after"], "{object}");
}

/// Every column of every row of the audit table, as text.
fn dump_table(srv: &Server, pg_url: Option<&str>) -> String {
    let sql = "SELECT id, at, server, who, action, kind, name, before_digest, after_digest, \
               cid, detail FROM audit_log";
    let out = match pg_url {
        Some(url) => Command::new("psql")
            .args([url, "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .unwrap(),
        None => Command::new("sqlite3")
            .arg(srv.dir.join("oxbus.db"))
            .arg(sql)
            .output()
            .unwrap(),
    };
    ok(&out)
}

#[tokio::test]
async fn every_admin_change_is_audited_with_who_and_digests() {
    let srv = env().start().await;
    every_change(&srv, None).await;
}

#[tokio::test]
async fn every_admin_change_is_audited_with_who_and_digests_on_postgres() {
    let (env, db) = env().postgres_store();
    let srv = env.start().await;
    every_change(&srv, Some(&db.url)).await;
}

async fn every_change(srv: &Server, pg_url: Option<&str>) {
    let server = call(srv, "GET", "/v1/info", Value::Null).await.json()["server"]
        .as_str()
        .unwrap()
        .to_owned();

    // Modules: deploy, deploy again, rollback, undeploy.
    let deploy = |n: u32| json!({"modules": [{"name": "aud", "source": module(n)}]});
    change(srv, "POST", "/v1/modules", deploy(1), 200).await;
    change(srv, "POST", "/v1/modules", deploy(2), 200).await;
    change(srv, "POST", "/v1/modules/aud/rollback", Value::Null, 200).await;
    change(srv, "DELETE", "/v1/modules/aud", Value::Null, 200).await;
    let m = entries(srv, "module/aud").await;
    assert_eq!(
        shape(&m),
        ["deploy - A", "deploy B A", "rollback B A", "undeploy B -"],
        "{m:#?}"
    );
    assert_eq!(m[0]["detail"]["version"], 1);
    assert_eq!(
        (
            &m[1]["detail"]["version"],
            &m[1]["detail"]["previous_version"]
        ),
        (&json!(2), &json!(1))
    );
    assert_eq!(m[1]["before"], m[0]["after"]);
    assert_ne!(m[1]["before"], m[1]["after"]);
    // Back to version 1: the same stored object, the same digest.
    assert_eq!(m[2]["after"], m[0]["after"]);
    assert_eq!(m[2]["before"], m[1]["after"]);
    assert_eq!(m[3]["before"], m[2]["after"]);

    // Channels.
    let ch = |svc: &str| json!({"name": "ach", "url_path": "/ach", "service": svc});
    change(srv, "POST", "/v1/channels", ch("test.echo"), 201).await;
    change(srv, "PUT", "/v1/channels/ach", ch("test.caller"), 200).await;
    change(srv, "DELETE", "/v1/channels/ach", Value::Null, 200).await;
    check_crud(&entries(srv, "channel/ach").await, "channel/ach");

    // Secrets: the value goes in, only a digest of the sealed form is recorded.
    let [v1, v2, p1, p2, imported, key] = SECRET_VALUES;
    change(srv, "PUT", "/v1/secrets/asec", json!({"value": v1}), 201).await;
    change(srv, "PUT", "/v1/secrets/asec", json!({"value": v2}), 200).await;
    change(srv, "DELETE", "/v1/secrets/asec", Value::Null, 200).await;
    check_crud(&entries(srv, "secret/asec").await, "secret/asec");

    // Security definitions (a password, hashed before it is stored).
    let basic =
        |pw: &str| json!({"name": "asd", "type": "basic", "username": "ann", "password": pw});
    change(srv, "POST", "/v1/security", basic(p1), 201).await;
    change(srv, "PUT", "/v1/security/asd", basic(p2), 200).await;
    change(srv, "DELETE", "/v1/security/asd", Value::Null, 200).await;
    check_crud(&entries(srv, "security/asd").await, "security/asd");
    // One more kept, with a sealed API key.
    let apikey = json!({"name": "akey", "type": "apikey", "key": key});
    change(srv, "POST", "/v1/security", apikey, 201).await;

    // Caches: create, update, clear, delete.
    change(srv, "PUT", "/v1/caches/acache", json!({}), 201).await;
    change(
        srv,
        "PUT",
        "/v1/caches/acache",
        json!({"max_entries": 42}),
        200,
    )
    .await;
    // An entry's write is data, not configuration: not audited.
    change(
        srv,
        "PUT",
        "/v1/caches/acache/keys/k",
        json!({"value": "x"}),
        200,
    )
    .await;
    change(srv, "POST", "/v1/caches/acache/clear", Value::Null, 200).await;
    change(srv, "DELETE", "/v1/caches/acache", Value::Null, 200).await;
    let c = entries(srv, "cache/acache").await;
    assert_eq!(
        shape(&c),
        ["create - A", "update B A", "clear B A", "delete B -"],
        "{c:#?}"
    );
    assert_ne!(c[1]["before"], c[1]["after"]);
    assert_eq!(c[2]["detail"]["cleared"], 1);
    assert_eq!(
        c[2]["before"], c[2]["after"],
        "a clear leaves the definition"
    );

    // Jobs: create, update, disable, execute, delete.
    let job = |minutes: u32| json!({"type": "interval_based", "service": "test.echo", "minutes": minutes});
    change(srv, "PUT", "/v1/jobs/ajob", job(5), 201).await;
    change(srv, "PUT", "/v1/jobs/ajob", job(7), 200).await;
    change(srv, "POST", "/v1/jobs/ajob/disable", Value::Null, 200).await;
    let run = change(srv, "POST", "/v1/jobs/ajob/execute", Value::Null, 200).await;
    change(srv, "DELETE", "/v1/jobs/ajob", Value::Null, 200).await;
    let j = entries(srv, "job/ajob").await;
    assert_eq!(
        shape(&j),
        [
            "create - A",
            "update B A",
            "disable B A",
            "execute B A",
            "delete B -"
        ],
        "{j:#?}"
    );
    assert_ne!(j[1]["before"], j[1]["after"]);
    assert_ne!(j[2]["before"], j[2]["after"]);
    assert_eq!(j[3]["detail"]["outcome"], "ok");
    assert_eq!(j[3]["cid"], run.json()["run"]["cid"]);
    assert!(j[3]["cid"].is_string());

    // A config import: a row per object it changed, and its own.
    let doc = json!({
        "secret": [{"name": "imp", "value": imported}],
        "channel_rest": [{"name": "impch", "url_path": "/impch", "service": "test.echo"}],
    });
    change(srv, "POST", "/v1/config", doc, 200).await;
    let s = entries(srv, "secret/imp").await;
    assert_eq!(shape(&s), ["create - A"]);
    assert_eq!(s[0]["detail"]["via"], "import");
    assert_eq!(shape(&entries(srv, "channel/impch").await), ["create - A"]);
    let imports = entries(srv, "config").await;
    assert_eq!(shape(&imports), ["import - -"]);
    assert_eq!(imports[0]["detail"]["changes"], 2);
    assert_eq!(imports[0]["detail"]["dry_run"], false);

    // A refused change: recorded as such, with its status.
    change(srv, "DELETE", "/v1/channels/nope", Value::Null, 404).await;
    let refused = entries(srv, "channel/nope").await;
    assert_eq!(shape(&refused), ["refused - -"]);
    assert_eq!(refused[0]["detail"]["status"], 404);
    assert_eq!(refused[0]["detail"]["attempted"], "delete");

    // Not changes: a service call, a read.
    change(srv, "POST", "/v1/invoke/test.echo", json!({}), 200).await;

    // Everything by root, through this server; nothing else recorded.
    let all = call(srv, "GET", "/v1/audit?limit=1000", Value::Null).await;
    let all_text = String::from_utf8(all.body.to_vec()).unwrap();
    let all = all.json()["entries"].as_array().unwrap().clone();
    let mut objects: Vec<String> = all
        .iter()
        .map(|e| e["object"].as_str().unwrap().to_owned())
        .collect();
    objects.sort();
    objects.dedup();
    assert_eq!(
        objects,
        [
            "cache/acache",
            "channel/ach",
            "channel/impch",
            "channel/nope",
            "config",
            "job/ajob",
            "module/aud",
            "secret/asec",
            "secret/imp",
            "security/akey",
            "security/asd",
        ]
    );
    assert_eq!(all.len(), 4 + 3 + 3 + 3 + 1 + 4 + 5 + 3 + 1, "{all:#?}");
    for e in &all {
        assert_eq!(e["who"], "root", "{e}");
        assert_eq!(e["server"], server.as_str(), "{e}");
        for d in [&e["before"], &e["after"]] {
            if let Some(d) = d.as_str() {
                assert!(
                    d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()),
                    "{e}"
                );
            }
        }
    }

    // No secret value anywhere: not in any column of any row, not in the API's answer.
    let table = dump_table(srv, pg_url);
    assert_eq!(table.lines().count(), all.len(), "{table}");
    assert_no_secret(&table, "the audit table");
    assert_no_secret(&all_text, "GET /v1/audit");
    let cli = srv.cli(&["audit", "--limit", "1000"]);
    assert!(cli.status.success(), "{cli:?}");
    let text = String::from_utf8(cli.stdout).unwrap();
    assert!(text.contains("secret/asec"), "{text}");
    assert_no_secret(&text, "`oxbus audit`");
    srv.assert_no_errors(&[]);
}

#[tokio::test]
async fn the_audit_log_pages_newest_first_and_filters() {
    let srv = env().start().await;
    for i in 0..7 {
        change(
            &srv,
            "PUT",
            &format!("/v1/secrets/s{i}"),
            json!({"value": format!("v{i}")}),
            201,
        )
        .await;
    }
    change(&srv, "PUT", "/v1/caches/pc", json!({}), 201).await;

    // Pages of three, each older than the last, following `next` to the end.
    let mut ids = Vec::new();
    let mut path = "/v1/audit?object=secret&limit=3".to_owned();
    let mut pages = 0;
    loop {
        let r = call(&srv, "GET", &path, Value::Null).await;
        assert_eq!(r.status, 200);
        let d = r.json();
        let page = d["entries"].as_array().unwrap();
        assert!(page.len() <= 3);
        ids.extend(page.iter().map(|e| e["id"].as_i64().unwrap()));
        pages += 1;
        match d["next"].as_str() {
            Some(next) => {
                assert!(
                    r.header("link")
                        .is_some_and(|l| l.contains(next) && l.contains("rel=\"next\"")),
                    "{:?}",
                    r.header("link")
                );
                assert_eq!(d["next_before"], *ids.last().unwrap());
                path = next.to_owned();
            }
            None => break,
        }
    }
    assert_eq!((pages, ids.len()), (3, 7));
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    let newest = entries(&srv, "secret/s6").await;
    assert_eq!(newest.len(), 1);
    assert_eq!(*ids.first().unwrap(), newest[0]["id"].as_i64().unwrap());

    // Filters.
    let count = |q: &'static str| {
        let srv = &srv;
        async move {
            let r = call(srv, "GET", &format!("/v1/audit?{q}"), Value::Null).await;
            assert_eq!(r.status, 200, "{q}: {}", String::from_utf8_lossy(&r.body));
            r.json()["entries"].as_array().unwrap().len()
        }
    };
    assert_eq!(count("").await, 8);
    assert_eq!(count("object=cache").await, 1);
    assert_eq!(count("object=cache/pc").await, 1);
    assert_eq!(count("object=secret/s3").await, 1);
    assert_eq!(count("object=secret/none").await, 0);
    assert_eq!(count("who=root").await, 8);
    assert_eq!(count("who=nobody").await, 0);
    assert_eq!(count("since=1h").await, 8);
    assert_eq!(count("since=2000-01-01T00:00:00Z").await, 8);
    assert_eq!(count("since=2999-01-01T00:00:00Z").await, 0);
    assert_eq!(count("limit=2").await, 2);

    // A relative `since` is carried to the next page as the time it meant.
    let r = call(&srv, "GET", "/v1/audit?since=1h&limit=3", Value::Null).await;
    assert_eq!(r.status, 200);
    let next = r.json()["next"].as_str().unwrap().to_owned();
    assert!(!next.contains("since=1h"), "{next}");
    let since = next
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("since="))
        .unwrap_or_else(|| panic!("no since in {next}"));
    assert!(since.ends_with('Z') && since.contains('T'), "{next}");
    assert!(r.header("link").is_some_and(|l| l.contains(&next)));
    let page2 = call(&srv, "GET", &next, Value::Null).await;
    assert_eq!(
        page2.status,
        200,
        "{}",
        String::from_utf8_lossy(&page2.body)
    );
    assert_eq!(page2.json()["entries"].as_array().unwrap().len(), 3);

    // Bad input: 400 naming the problem.
    for (q, says) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("since=yesterday", "since"),
        ("object=", "object"),
        ("object=secret/", "object"),
        ("before=x", "before"),
        ("colour=red", "colour"),
        ("who=", "who must not be empty"),
    ] {
        let r = call(&srv, "GET", &format!("/v1/audit?{q}"), Value::Null).await;
        assert_eq!(r.status, 400, "{q}");
        let msg = r.json()["error"].as_str().unwrap().to_owned();
        assert!(msg.contains(says), "{q}: {msg}");
    }

    // The CLI: text with a pointer to the next page, JSON as the API answers.
    let out = srv.cli(&["audit", "--object", "secret", "--limit", "2"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("secret/s6") && text.contains("secret/s5"),
        "{text}"
    );
    assert!(!text.contains("secret/s4"), "{text}");
    assert!(
        text.contains("more: the same command with --before"),
        "{text}"
    );
    let out = srv.cli(&["audit", "--who", "root", "--since", "1h", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["entries"].as_array().unwrap().len(), 8);
    let out = srv.cli(&["audit", "--since", "soon"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("since"),
        "{out:?}"
    );
}

#[tokio::test]
async fn a_pickup_deploy_is_audited_as_pickup() {
    let srv = env().pickup().start().await;
    let dir = srv.pickup_dir();
    std::fs::write(dir.join("picked.py"), module(1)).unwrap();
    let first = eventually(
        Duration::from_secs(30),
        "the pickup deploy's audit row",
        || {
            let srv = &srv;
            async move {
                let e = entries(srv, "module/picked").await;
                (!e.is_empty()).then_some(e)
            }
        },
    )
    .await;
    assert_eq!(shape(&first), ["deploy - A"]);
    assert_eq!(first[0]["who"], "pickup");
    assert_eq!(first[0]["detail"]["version"], 1);
    std::fs::write(dir.join("picked.py"), module(2)).unwrap();
    let both = eventually(Duration::from_secs(30), "the second deploy's row", || {
        let srv = &srv;
        async move {
            let e = entries(srv, "module/picked").await;
            (e.len() == 2).then_some(e)
        }
    })
    .await;
    assert_eq!(shape(&both), ["deploy - A", "deploy B A"]);
    assert_eq!(both[1]["before"], both[0]["after"]);
    assert_ne!(both[1]["before"], both[1]["after"]);
    assert_eq!(
        (
            &both[1]["detail"]["version"],
            &both[1]["detail"]["previous_version"]
        ),
        (&json!(2), &json!(1))
    );
    assert_eq!(both[1]["who"], "pickup");
    // The same deploy through the API is root's.
    let r = change(
        &srv,
        "POST",
        "/v1/modules",
        json!({"modules": [{"name": "picked", "source": module(3)}]}),
        200,
    )
    .await;
    assert_eq!(r.json()["modules"][0]["version"], 3);
    let all = entries(&srv, "module/picked").await;
    assert_eq!(all.len(), 3);
    assert_eq!(all[2]["who"], "root");
    assert_eq!(all[2]["before"], all[1]["after"]);
}

#[tokio::test]
async fn a_failed_audit_write_is_logged_and_the_change_stands() {
    let srv = env().start().await;
    // The store refuses audit rows from now on.
    let out = Command::new("sqlite3")
        .arg(srv.dir.join("oxbus.db"))
        .arg(
            "CREATE TRIGGER no_audit BEFORE INSERT ON audit_log \
             BEGIN SELECT RAISE(FAIL, 'audit rows refused by the test'); END;",
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    failed_write(&srv).await;
}

#[tokio::test]
async fn a_failed_audit_write_is_logged_and_the_change_stands_on_postgres() {
    let (env, db) = env().postgres_store();
    let srv = env.start().await;
    // The store refuses audit rows from now on.
    db.sql(
        "CREATE FUNCTION no_audit() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'audit rows refused by the test'; END $$; \
         CREATE TRIGGER no_audit BEFORE INSERT ON audit_log \
         FOR EACH ROW EXECUTE FUNCTION no_audit();",
    );
    failed_write(&srv).await;
}

/// A change while the store refuses audit rows: it stands, and the failure is logged.
async fn failed_write(srv: &Server) {
    change(srv, "PUT", "/v1/secrets/kept", json!({"value": "v"}), 201).await;
    let listed = call(srv, "GET", "/v1/secrets", Value::Null).await.json();
    assert_eq!(listed["secrets"][0]["name"], "kept", "the change stands");
    let line = eventually(Duration::from_secs(10), "the error line", || async move {
        srv.log_lines("cannot write the audit log")
            .into_iter()
            .next()
    })
    .await;
    assert!(line.contains("ERROR"), "{line}");
    for field in [
        "who=root",
        "action=create",
        "kind=secret",
        "name=kept",
        "audit rows refused",
    ] {
        assert!(line.contains(field), "{field} missing: {line}");
    }
    assert!(entries(srv, "secret/kept").await.is_empty());
}

#[tokio::test]
async fn token_changes_and_role_refusals_are_audited_without_the_token() {
    let srv = env().start().await;
    token_changes(&srv, None).await;
}

#[tokio::test]
async fn token_changes_and_role_refusals_are_audited_without_the_token_on_postgres() {
    let (env, db) = env().postgres_store();
    let srv = env.start().await;
    token_changes(&srv, Some(&db.url)).await;
}

async fn token_changes(srv: &Server, pg_url: Option<&str>) {
    let created = change(
        srv,
        "POST",
        "/v1/tokens",
        json!({"name": "ci", "role": "viewer"}),
        201,
    )
    .await;
    // `pickup` is the pickup directory's identity: no token takes it, in any case.
    for name in ["pickup", "PickUp"] {
        change(
            srv,
            "POST",
            "/v1/tokens",
            json!({"name": name, "role": "admin"}),
            409,
        )
        .await;
    }
    let token = created.json()["token"].as_str().unwrap().to_owned();
    // A change outside the viewer's role: refused (403) and recorded with its identity.
    let r = srv
        .admin("DELETE", "/v1/channels/anything", Some(&token), b"")
        .await;
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    // An import the viewer may not make; a path's name is recorded capped.
    let r = srv
        .admin("POST", "/v1/config", Some(&token), b"{\"secret\": []}")
        .await;
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    let long = "n".repeat(5000);
    let r = srv
        .admin("DELETE", &format!("/v1/channels/{long}"), Some(&token), b"")
        .await;
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    change(srv, "DELETE", "/v1/tokens/ci", Value::Null, 200).await;

    let t = entries(srv, "token/ci").await;
    assert_eq!(shape(&t), ["create - A", "revoke B -"], "{t:#?}");
    assert_eq!(t[1]["before"], t[0]["after"]);
    assert!(t.iter().all(|e| e["who"] == "root"), "{t:#?}");
    let refused = entries(srv, "channel/anything").await;
    assert_eq!(shape(&refused), ["refused - -"], "{refused:#?}");
    assert_eq!(refused[0]["who"], "ci");
    assert_eq!(refused[0]["detail"]["status"], 403);
    let import = entries(srv, "config").await;
    assert_eq!(shape(&import), ["refused - -"], "{import:#?}");
    assert_eq!(
        (&import[0]["who"], &import[0]["detail"]["attempted"]),
        (&json!("ci"), &json!("import"))
    );
    let channels = entries(srv, "channel").await;
    let capped = channels
        .iter()
        .find(|e| e["name"].as_str().is_some_and(|n| n.starts_with("nnn")))
        .unwrap_or_else(|| panic!("no refused row of the long path: {channels:#?}"));
    assert_eq!(capped["action"], "refused");
    let name = capped["name"].as_str().unwrap();
    assert!(name.chars().count() < 300 && name.ends_with('…'), "{name}");
    let reserved = entries(srv, "token").await;
    assert_eq!(
        reserved
            .iter()
            .filter(|e| e["action"] == "refused" && e["detail"]["status"] == 409)
            .count(),
        2,
        "{reserved:#?}"
    );

    // Neither the token nor its hash is in any column of any row.
    let table = dump_table(srv, pg_url);
    let hash = {
        use sha2::Digest;
        let d = sha2::Sha256::digest(token.as_bytes());
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    assert!(!table.contains(&token), "the token is in the audit table");
    assert!(
        !table.contains(&hash),
        "the token's hash is in the audit table"
    );
}

#[tokio::test]
async fn a_deploy_whose_client_hangs_up_is_still_done_and_audited() {
    use tokio::io::AsyncWriteExt;
    let srv = env().start().await;
    // The whole request, then the connection closed before any answer: the deploy runs on.
    let body = json!({"modules": [{"name": "hup", "source": module(7)}]}).to_string();
    let head = format!(
        "POST /v1/modules HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        srv.admin_token(),
        body.len()
    );
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", srv.admin_port()))
        .await
        .unwrap();
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(body.as_bytes()).await.unwrap();
    conn.shutdown().await.unwrap();
    drop(conn);
    let e = eventually(Duration::from_secs(30), "the deploy's audit row", || {
        let srv = &srv;
        async move {
            let e = entries(srv, "module/hup").await;
            (!e.is_empty()).then_some(e)
        }
    })
    .await;
    assert_eq!(shape(&e), ["deploy - A"], "{e:#?}");
    assert_eq!(
        (&e[0]["who"], &e[0]["detail"]["version"]),
        (&json!("root"), &json!(1))
    );
    // Deployed and serving.
    let r = change(&srv, "POST", "/v1/invoke/aud.v", json!({}), 200).await;
    assert_eq!(r.json()["v"], 7);
    srv.assert_no_errors(&[]);
}

/// `psql -At -c sql` against `url`: its output, trimmed.
fn psql_value(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([url, "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .unwrap();
    ok(&out).trim().to_owned()
}

/// A create by `POST /v1/channels` records the channel it created, and not a change made
/// between its before- and after-reads through another path to the store (another server,
/// here a session of our own). Deterministic: that session holds the channels table, so
/// the create has read its digests and waits to write while the other change is made.
#[tokio::test]
async fn a_create_is_credited_with_its_own_object_only_on_postgres() {
    use std::io::Write;
    let (env, db) = env().postgres_store();
    let srv = env.start().await;
    let ch =
        |name: &str| json!({"name": name, "url_path": format!("/{name}"), "service": "test.echo"});
    change(&srv, "POST", "/v1/channels", ch("theirs"), 201).await;

    let mut other = Command::new("psql")
        .args([db.url.as_str(), "-q", "-v", "ON_ERROR_STOP=1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut session = other.stdin.take().unwrap();
    session
        .write_all(b"BEGIN;\nLOCK TABLE channels IN EXCLUSIVE MODE;\n")
        .unwrap();
    session.flush().unwrap();
    let url = db.url.clone();
    eventually(Duration::from_secs(30), "the other session's lock", || {
        let url = url.clone();
        async move {
            let held = psql_value(
                &url,
                "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
                 WHERE c.relname = 'channels' AND l.mode = 'ExclusiveLock' AND l.granted",
            );
            (held == "1").then_some(())
        }
    })
    .await;
    let create = call(&srv, "POST", "/v1/channels", ch("mine"));
    let meddle = async move {
        eventually(
            Duration::from_secs(30),
            "the create waiting to write",
            || {
                let url = url.clone();
                async move {
                    let waiting = psql_value(
                        &url,
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                     AND query LIKE 'INSERT INTO channels%'",
                    );
                    (waiting != "0").then_some(())
                }
            },
        )
        .await;
        session
            .write_all(b"DELETE FROM channels WHERE name = 'theirs';\nCOMMIT;\n")
            .unwrap();
        drop(session);
    };
    let (r, ()) = tokio::join!(create, meddle);
    assert!(other.wait().unwrap().success(), "the other session failed");
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));

    let mine = entries(&srv, "channel/mine").await;
    assert_eq!(shape(&mine), ["create - A"], "{mine:#?}");
    let theirs = entries(&srv, "channel/theirs").await;
    assert_eq!(
        shape(&theirs),
        ["create - A"],
        "the other session's delete is not root's: {theirs:#?}"
    );
}

/// A change the caller's role does not allow, made while the store is known to be down: its
/// 403 does not wait on the store, and the refusal is logged instead of recorded.
#[tokio::test]
async fn a_role_refusal_while_the_store_is_down_is_logged_not_recorded() {
    let pg = PrivatePg::start();
    let srv = env()
        .set("store", "url", &format!("{:?}", pg.url()))
        .start()
        .await;
    let created = change(
        &srv,
        "POST",
        "/v1/tokens",
        json!({"name": "ro", "role": "viewer"}),
        201,
    )
    .await;
    let token = created.json()["token"].as_str().unwrap().to_owned();
    // Seen in the store by this server: it still authenticates while the store is down.
    let r = srv.admin("GET", "/v1/jobs", Some(&token), b"").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    pg.stop();
    let store_is = |state: &'static str| {
        let srv = &srv;
        eventually(Duration::from_secs(30), state, move || async move {
            let r = srv.get("/healthz").await;
            (r.status == 200 && r.json()["store"] == state).then_some(())
        })
    };
    store_is("degraded").await;
    let r = srv
        .admin("DELETE", "/v1/channels/down", Some(&token), b"")
        .await;
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    let line = eventually(Duration::from_secs(10), "the refusal's log line", || {
        let srv = &srv;
        async move { srv.log_lines("not in the audit log").into_iter().next() }
    })
    .await;
    for field in [
        "WARN",
        "who=ro",
        "action=delete",
        "kind=channel",
        "name=down",
    ] {
        assert!(line.contains(field), "{field} missing: {line}");
    }

    pg.start_again();
    store_is("ok").await;
    assert!(entries(&srv, "channel/down").await.is_empty());
    assert!(srv.log_lines("cannot write the audit log").is_empty());
    srv.assert_no_errors(&[]);
}
