//! The mapping of Zato 3.2 enmasse objects to Oxbus's, on snippets and on the sample export
//! the integration test imports into a real server.

use super::*;
use crate::model::document::Document;

fn parse(yaml: &str) -> Map<String, Value> {
    match serde_yaml_ng::from_str(yaml).unwrap() {
        Value::Object(m) => m,
        other => panic!("not a mapping: {other}"),
    }
}

fn mapped(yaml: &str) -> Mapping {
    map(&parse(yaml), &Stored::default())
}

fn skipped_reason<'a>(m: &'a Mapping, kind: &str, name: &str) -> &'a str {
    m.skipped
        .iter()
        .find(|s| s.zato_kind == kind && s.zato_name.as_deref() == Some(name))
        .map(|s| s.reason.as_str())
        .unwrap_or_else(|| panic!("{kind} {name} not skipped: {:?}", m.skipped))
}

fn one<'a>(m: &'a Mapping, kind: &str, name: &str) -> &'a Value {
    m.doc[kind]
        .as_array()
        .unwrap_or_else(|| panic!("no {kind} in {:?}", m.doc))
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {:?}", m.doc[kind]))
}

/// The document must read as `oxbus config import`'s.
fn assert_a_document(m: &Mapping) {
    serde_json::from_value::<Document>(Value::Object(m.doc.clone()))
        .unwrap_or_else(|e| panic!("not a config document: {e}\n{:#?}", m.doc));
}

const SAMPLE: &str = include_str!("../../../../integration/tests/data/zato_enmasse_sample.yaml");

#[test]
fn the_sample_export_maps_what_oxbus_has_and_reports_the_rest() {
    let mut file = parse(SAMPLE);
    let mut v = Value::Object(file);
    substitute_env(&mut v, &|k: &str| {
        (k == "CRM_API_PASSWORD").then(|| "crm-pw".to_owned())
    });
    let Value::Object(f) = v else { unreachable!() };
    file = f;
    let m = map(&file, &Stored::default());
    assert_a_document(&m);
    let got: BTreeSet<(String, String)> = m
        .mapped
        .iter()
        .map(|x| (x.oxbus_kind.to_owned(), x.oxbus_name.clone()))
        .collect();
    for (k, n) in [
        ("security", "CRM-API-users"),
        ("security", "partner.apikey"),
        ("channel_rest", "/api/customers/get"),
        ("channel_rest", "partner.orders"),
        ("channel_rest", "legacy.xml"),
        ("outgoing_rest", "CRM-backend"),
        ("outgoing_rest", "billing"),
        ("outgoing_rest", "forms"),
        ("outgoing_sql", "crm.db"),
        ("outgoing_redis", "default"),
        ("outgoing_amqp", "orders.out"),
        ("job", "crm.sync"),
        ("job", "reports.nightly"),
        ("cache", "default"),
        ("cache", "crm.sessions"),
        ("outgoing_rest auth", "billing"),
    ] {
        assert!(
            got.contains(&(k.into(), n.into())),
            "{k} {n} not mapped: {got:?}"
        );
    }
    assert_eq!(got.len(), 16, "{got:?}");
    let skipped: BTreeSet<(String, Option<String>)> = m
        .skipped
        .iter()
        .map(|s| (s.zato_kind.clone(), s.zato_name.clone()))
        .collect();
    let want: BTreeSet<(String, Option<String>)> = [
        ("security", "ops.basic"),
        ("security", "legacy.ntlm"),
        ("security", "mobile.jwt"),
        ("channel_rest", "ops.status"),
        ("channel_rest", "/api/old"),
        ("channel_soap", "legacy.soap"),
        ("outconn_sql", "reports.oracle"),
        ("scheduler", "broken.interval"),
        ("pubsub_topic", "/orders/new"),
        ("email_smtp", "notifications"),
        ("my_custom_things", "not-a-zato-kind"),
    ]
    .into_iter()
    .map(|(k, n)| (k.to_owned(), Some(n.to_owned())))
    .collect();
    assert_eq!(skipped, want);
    assert!(
        skipped_reason(&m, "my_custom_things", "not-a-zato-kind")
            .starts_with("unknown top-level key")
    );
    assert!(skipped_reason(&m, "channel_soap", "legacy.soap").contains("SOAP"));
    assert!(skipped_reason(&m, "security", "legacy.ntlm").contains("NTLM"));
    // The channel whose definition was left out is left out too, saying why.
    let why = skipped_reason(&m, "channel_rest", "ops.status");
    assert!(
        why.contains("\"ops.basic\" is not imported") && why.contains("password"),
        "{why}"
    );

    // The password from the environment, the API key from the file.
    let crm = one(&m, "security", "CRM-API-users");
    assert_eq!(crm["password"], "crm-pw");
    assert_eq!(
        (
            crm["type"].as_str(),
            crm["username"].as_str(),
            crm["realm"].as_str()
        ),
        (Some("basic"), Some("crm"), Some("CRM"))
    );
    assert_eq!(
        one(&m, "security", "partner.apikey")["key"],
        "pr0ven-partner-key"
    );
    let ch = one(&m, "channel_rest", "/api/customers/get");
    assert_eq!(ch["url_path"], "/api/customers/{customer_id}");
    assert_eq!(ch["methods"], json!(["GET"]));
    assert_eq!(ch["security"], "CRM-API-users");
    assert_eq!(ch["service"], "crm.customer.get");
    assert_eq!(one(&m, "channel_rest", "legacy.xml")["data_format"], "raw");
    // Outgoing: basic from the definition, OAuth2 from the bearer token, the base path kept.
    let out = one(&m, "outgoing_rest", "CRM-backend");
    assert_eq!(out["address"], "https://crm.example.com");
    assert_eq!(
        out["auth"],
        json!({"type": "basic", "username": "crm", "password": "crm-pw"})
    );
    let billing = one(&m, "outgoing_rest", "billing");
    assert_eq!(billing["address"], "https://billing.example.com");
    assert_eq!(billing["url_path"], "/api/invoices");
    assert_eq!(billing["auth"]["type"], "oauth2");
    assert_eq!(
        billing["auth"]["token_url"],
        "https://auth.example.com/oauth/token"
    );
    assert_eq!(billing["auth"]["client_id"], "billing-client");
    assert_eq!(billing["auth"]["scope"], "invoices.read");
    assert_eq!(billing["auth"]["client_secret"], "billing-client-secret");
    assert_eq!(one(&m, "outgoing_rest", "forms")["data_format"], "form");
    // SQL without a password: imported, and the line says to set it.
    let sql = one(&m, "outgoing_sql", "crm.db");
    assert_eq!(
        (sql["engine"].as_str(), sql["url"].as_str()),
        (
            Some("postgresql"),
            Some("postgres://app@db.example.com:5432/crm")
        )
    );
    assert_eq!(sql["pool_max"], 20);
    assert!(sql.get("password").is_none());
    let line = m.mapped.iter().find(|x| x.oxbus_name == "crm.db").unwrap();
    assert!(
        line.notes.iter().any(|n| n.contains("set it")),
        "{:?}",
        line.notes
    );
    let amqp = one(&m, "outgoing_amqp", "orders.out");
    assert_eq!(amqp["address"], "amqp://127.0.0.1:5672/%2F");
    assert_eq!(
        (amqp["username"].as_str(), amqp["password"].as_str()),
        (Some("guest"), Some("guest"))
    );
    assert_eq!(
        one(&m, "outgoing_redis", "default")["address"],
        "redis://127.0.0.1:6379/0"
    );
    // Jobs: the naive start date taken as UTC, the JSON extra parsed.
    let sync = one(&m, "job", "crm.sync");
    assert_eq!(
        (sync["type"].as_str(), sync["minutes"].as_u64()),
        (Some("interval_based"), Some(10))
    );
    assert_eq!(sync["start_date"], "2024-01-01T06:00:00Z");
    let nightly = one(&m, "job", "reports.nightly");
    assert_eq!(
        (nightly["cron"].as_str(), nightly["timezone"].as_str()),
        (Some("0 2 * * *"), Some("UTC"))
    );
    assert_eq!(nightly["extra"], json!({"full": true}));
    assert!(skipped_reason(&m, "scheduler", "broken.interval").contains("needs an interval"));
    // Caches.
    let def = one(&m, "cache", "default");
    assert_eq!(
        (
            def["max_entries"].as_u64(),
            def["extend_expiry_on_get"].as_bool(),
            def["replicate"].as_bool()
        ),
        (Some(10000), Some(true), Some(true))
    );
    assert_eq!(one(&m, "cache", "crm.sessions")["replicate"], false);
}

#[test]
fn a_definition_without_a_password_is_mapped_only_when_the_server_keeps_one() {
    let yaml = "security:\n- name: ops\n  type: basic_auth\n  username: ops\n\
                channel_rest:\n- name: s\n  service: x\n  url_path: /s\n  security_name: ops\n";
    let m = mapped(yaml);
    assert!(m.doc.get("security").is_none() && m.doc.get("channel_rest").is_none());
    let why = skipped_reason(&m, "security", "ops");
    assert!(
        why.contains("never exports passwords")
            && why.contains("create security ops first (POST /v1/security"),
        "{why}"
    );
    // Placeholders are no passwords either, and are never sent.
    for p in [
        "'******'",
        "'@@OPS_PASSWORD@@'",
        "'{Zato_Enmasse_Env.OPS_PW}'",
        "''",
        "null",
    ] {
        let m = mapped(&yaml.replace(
            "username: ops\n",
            &format!("username: ops\n  password: {p}\n"),
        ));
        assert!(m.doc.get("security").is_none(), "{p}: {:?}", m.doc);
        let why = skipped_reason(&m, "security", "ops");
        assert!(why.starts_with("password "), "{p}: {why}");
    }
    let m = mapped(&yaml.replace(
        "username: ops\n",
        "username: ops\n  password: '{Zato_Enmasse_Env.OPS_PW}'\n",
    ));
    assert!(skipped_reason(&m, "security", "ops").contains("the variable OPS_PW is not set"));

    // The server holds a basic definition of that name: mapped without a password (kept).
    let stored = Stored {
        security: vec![SecurityDef {
            sealed: Some("oxbus1:x".into()),
            ..serde_json::from_value(json!({"name": "ops", "type": "basic", "username": "old"}))
                .unwrap()
        }],
        ..Stored::default()
    };
    let m = map(&parse(yaml), &stored);
    assert!(m.skipped.is_empty(), "{:?}", m.skipped);
    let def = one(&m, "security", "ops");
    assert!(
        def.get("password").is_none() && def.get("sealed").is_none(),
        "{def}"
    );
    assert!(m.mapped[0].notes.iter().any(|n| n.contains("is kept")));
    assert_eq!(one(&m, "channel_rest", "s")["security"], "ops");
    // An apikey definition of that name is no basic one: nothing to keep.
    let stored = Stored {
        security: vec![
            serde_json::from_value(json!({"name": "ops", "type": "apikey", "sealed": "oxbus1:x"}))
                .unwrap(),
        ],
        ..Stored::default()
    };
    assert!(map(&parse(yaml), &stored).doc.get("security").is_none());
}

#[test]
fn an_outgoing_credential_is_kept_only_for_the_same_destination_and_identity() {
    let yaml = "security:\n- name: b\n  type: basic_auth\n  username: u\n\
                outgoing_rest:\n- name: o\n  host: https://a.example.com\n  url_path: /x\n  security_name: b\n";
    let m = mapped(yaml);
    assert!(m.doc.get("outgoing_rest").is_none());
    assert!(skipped_reason(&m, "outgoing_rest", "o").contains("no password in the file"));
    let stored = |address: &str, user: &str| Stored {
        rest: vec![
            serde_json::from_value(json!({"name": "o", "address": address,
            "auth": {"type": "basic", "username": user, "sealed": "oxbus1:x"}}))
            .unwrap(),
        ],
        ..Stored::default()
    };
    let m = map(&parse(yaml), &stored("https://a.example.com", "u"));
    assert!(
        one(&m, "outgoing_rest", "o")["auth"]
            .get("password")
            .is_none()
    );
    for (address, user) in [
        ("https://b.example.com", "u"),
        ("https://a.example.com", "v"),
    ] {
        let m = map(&parse(yaml), &stored(address, user));
        assert!(m.doc.get("outgoing_rest").is_none(), "{address} {user}");
    }
}

#[test]
fn channels_keep_their_method_format_and_path_or_say_what_differs() {
    let m = mapped(
        "channel_plain_http:\n\
         - name: My Channel\n  service: a.b\n  url_path: /a/{id}\n  method: get\n  merge_url_params_req: 'False'\n  url_params_pri: qs-over-path\n  params_pri: msg-over-channel-params\n\
         - name: grouped\n  service: a.b\n  url_path: /g\n  security_groups: [partners]\n\
         - name: bad path\n  service: a.b\n  url_path: /a/x{id}\n\
         - name: zato.internal\n  service: a.b\n  url_path: /zato/x\n\
         - name: no service\n  url_path: /n\n\
         http_soap:\n\
         - name: via.http_soap\n  connection: channel\n  transport: plain_http\n  service: a.b\n  url_path: /h\n\
         - name: soap.one\n  connection: channel\n  transport: soap\n  service: a.b\n  url_path: /soap\n",
    );
    assert_a_document(&m);
    let c = one(&m, "channel_rest", "My-Channel");
    assert_eq!(c["methods"], json!(["GET"]));
    assert_eq!(c["url_path"], "/a/{id}");
    // Zato's params_pri is the channel's params_priority; absent, Zato's default.
    assert_eq!(c["params_priority"], "msg-over-channel-params");
    assert_eq!(
        one(&m, "channel_rest", "via.http_soap")["params_priority"],
        "channel-params-over-msg"
    );
    let notes = &m
        .mapped
        .iter()
        .find(|x| x.oxbus_name == "My-Channel")
        .unwrap()
        .notes;
    assert!(
        notes
            .iter()
            .any(|n| n.contains("merge_url_params_req was off")),
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("url_params_pri qs-over-path")),
        "{notes:?}"
    );
    assert!(notes.iter().any(|n| n.starts_with("renamed")), "{notes:?}");
    assert_eq!(one(&m, "channel_rest", "via.http_soap")["url_path"], "/h");
    assert!(skipped_reason(&m, "channel_plain_http", "grouped").contains("security groups"));
    assert!(skipped_reason(&m, "channel_plain_http", "bad path").contains("whole segment"));
    assert!(skipped_reason(&m, "channel_plain_http", "zato.internal").contains("internal"));
    assert_eq!(
        skipped_reason(&m, "channel_plain_http", "no service"),
        "no service"
    );
    assert!(skipped_reason(&m, "http_soap", "soap.one").contains("SOAP"));
    // Two Zato names that become one Oxbus name: the second is reported.
    let m = mapped(
        "security:\n- {name: a b, type: apikey, password: k1}\n- {name: a-b, type: apikey, password: k2}\n",
    );
    assert_eq!(one(&m, "security", "a-b")["key"], "k1");
    assert!(skipped_reason(&m, "security", "a-b").contains("already security"));
}

#[test]
fn a_file_that_is_no_enmasse_export_is_refused_with_the_reason() {
    let dir = std::env::temp_dir().join(format!("oxbus-zato-import-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let read = |text: &str| {
        let f = dir.join("f.yaml");
        std::fs::write(&f, text).unwrap();
        read_file(&f, |_| None).map(|_| ()).unwrap_err().to_string()
    };
    assert!(read("- a\n- b\n").contains("not a Zato enmasse export: expected a mapping"));
    let e = read("channels: []\nservers: []\n");
    assert!(e.contains("none of its keys (channels, servers)"), "{e}");
    assert!(read("security: [\n").contains("not valid YAML or JSON"));
    let e = read_file(&dir.join("missing.yaml"), |_| None)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("cannot read"), "{e}");
    // JSON reads too, and a variable is put in.
    let f = dir.join("f.json");
    std::fs::write(
        &f,
        r#"{"security": [{"name": "a", "type": "apikey", "password": "{Zato_Enmasse_Env.K}"}]}"#,
    )
    .unwrap();
    let doc = read_file(&f, |k| (k == "K").then(|| "from-env".into())).unwrap();
    assert_eq!(doc["security"][0]["password"], "from-env");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn env_placeholders_are_replaced_only_when_the_variable_is_set() {
    let mut v = json!({"a": ["x{Zato_Enmasse_Env.A}y {Zato_Enmasse_Env.B} {Zato_Enmasse_Env.A"]});
    substitute_env(&mut v, &|k: &str| (k == "A").then(|| "1".to_owned()));
    assert_eq!(v["a"][0], "x1y {Zato_Enmasse_Env.B} {Zato_Enmasse_Env.A");
    assert_eq!(placeholder("s3cret"), None);
    assert!(placeholder("******").is_some() && placeholder(" ").is_some());
}

#[test]
fn with_replace_only_the_kinds_a_zato_export_describes_are_replaced() {
    let mut doc = mapped("channel_rest:\n- {name: a, service: s, url_path: /a}\n").doc;
    let export = json!({
        "config_version": 7,
        "channel_rest": [{"name": "old", "url_path": "/old", "service": "s"},
                         {"name": "ps", "type": "pubsub", "url_path": "/pubsub"}],
        "service_module": [{"name": "m", "source": "x = 1\n"}],
        "secret": [{"name": "s", "sealed": "oxbus1:x"}],
        "security": [{"name": "old", "type": "apikey", "sealed": "oxbus1:x"}],
        "pubsub_topic": [{"name": "/t"}],
    });
    keep_other_kinds(&mut doc, &export);
    let names: Vec<&str> = doc["channel_rest"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "ps"]);
    assert_eq!(doc["service_module"], export["service_module"]);
    assert_eq!(doc["secret"], export["secret"]);
    assert_eq!(doc["pubsub_topic"], export["pubsub_topic"]);
    assert!(doc.get("security").is_none() && doc.get("config_version").is_none());
}
