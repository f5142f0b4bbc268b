//! Secrets sealed at rest, config export → wipe → import, and imports validated in full:
//! against the real binary, on SQLite and on PostgreSQL.

use oxbus_integration::api::{admin, config_version, export_body, ok};
use oxbus_integration::*;
use serde_json::{Value, json};
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const PLAIN: &str = "pl41n-t3xt-S3CRET-value";
const PLAIN2: &str = "an0ther-S3CRET-from-stdin";
const PLAIN3: &str = "imp0rted-S3CRET-in-yaml";

const MODULE: &str = r#"from oxbus import Service

class Hello(Service):
    name = 'cfg.hello'

    def handle(self):
        self.response.payload = {'hello': 'from cfg'}
"#;

fn env() -> Env {
    // debug: the most the server ever logs, and still no secret in it.
    Env::new()
        .workers(2)
        .with_test_services()
        .set("server", "log_level", "\"debug\"")
}

fn cli(srv: &Server, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(oxbus_bin())
        .args(args)
        .env(
            "OXBUS_URL",
            format!("http://127.0.0.1:{}", srv.admin_port()),
        )
        .env("OXBUS_TOKEN", srv.admin_token())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

/// Every byte the store holds, as the engine keeps it: the SQLite files, or a pg_dump.
fn raw_store(srv: &Server, db: Option<&PgDatabase>) -> Vec<u8> {
    match db {
        Some(db) => {
            let out = Command::new("pg_dump")
                .args(["--data-only", &db.url])
                .output()
                .expect("pg_dump (postgresql-client) is needed for the PostgreSQL tests");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(!out.stdout.is_empty());
            out.stdout
        }
        None => {
            let mut all = Vec::new();
            for entry in std::fs::read_dir(&srv.dir).unwrap() {
                let p = entry.unwrap().path();
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                if name.starts_with("oxbus.db") {
                    all.extend(std::fs::read(&p).unwrap());
                }
            }
            assert!(!all.is_empty(), "no SQLite files in {}", srv.dir.display());
            all
        }
    }
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

async fn secrets_cycle(srv: Server, db: Option<PgDatabase>) {
    // In through the API, the CLI (stdin) and a config import with a plain value.
    let r = admin(
        &srv,
        "PUT",
        "/v1/secrets/crm.password",
        json!({"value": PLAIN}),
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert!(!contains(&r.body, PLAIN));
    ok(&cli(
        &srv,
        &["secret", "set", "mq/token"],
        Some(&format!("{PLAIN2}\n")),
    ));
    let yaml = srv.dir.join("in.yaml");
    std::fs::write(
        &yaml,
        format!("secret:\n- name: imported\n  value: {PLAIN3}\n"),
    )
    .unwrap();
    let out = ok(&cli(
        &srv,
        &["config", "import", yaml.to_str().unwrap()],
        None,
    ));
    assert!(out.contains("create secret imported"), "{out}");

    // A bad body is refused without quoting it.
    let r = srv
        .admin(
            "PUT",
            "/v1/secrets/x",
            Some(&srv.admin_token()),
            format!("{{\"value\": 1, \"{PLAIN}\": 2}}").as_bytes(),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(!contains(&r.body, PLAIN));

    // Never shown back: not by the list, not by the export.
    let list = admin(&srv, "GET", "/v1/secrets", Value::Null).await;
    assert_eq!(list.status, 200);
    let names: Vec<String> = list.json()["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["crm.password", "imported", "mq/token"]);
    let text = ok(&cli(&srv, &["secret", "list"], None));
    assert!(text.contains("mq/token"), "{text}");
    let export = ok(&cli(&srv, &["config", "export"], None));
    for p in [PLAIN, PLAIN2, PLAIN3] {
        assert!(!contains(&list.body, p));
        assert!(!export.contains(p), "plaintext in the export:\n{export}");
    }
    assert_eq!(export.matches("sealed: oxbus1:").count(), 3, "{export}");

    // The raw store and the log hold no plaintext.
    let raw = raw_store(&srv, db.as_ref());
    assert!(
        contains(&raw, "oxbus1:"),
        "the sealed values are in the store"
    );
    for p in [PLAIN, PLAIN2, PLAIN3] {
        assert!(!contains(&raw, p), "plaintext {p} in the raw store");
        assert!(!srv.log().contains(p), "plaintext {p} in the log");
    }

    // The stored values still open after a restart (importing the export changes nothing),
    // and a trailing newline from stdin was not part of the value.
    let srv = srv.restart().await;
    let exported = srv.dir.join("export.yaml");
    ok(&cli(
        &srv,
        &["config", "export", "-f", exported.to_str().unwrap()],
        None,
    ));
    let before = config_version(&srv).await;
    let out = ok(&cli(
        &srv,
        &["config", "import", exported.to_str().unwrap()],
        None,
    ));
    assert!(out.starts_with("0 changes"), "{out}");
    assert_eq!(config_version(&srv).await, before);
    let same = format!("secret:\n- name: mq/token\n  value: {PLAIN2}\n");
    std::fs::write(&yaml, same).unwrap();
    let out = ok(&cli(
        &srv,
        &["config", "import", yaml.to_str().unwrap()],
        None,
    ));
    assert!(out.starts_with("0 changes"), "{out}");

    // Delete: gone from the list.
    let r = admin(&srv, "DELETE", "/v1/secrets/crm.password", Value::Null).await;
    assert_eq!(r.status, 200);
    let r = admin(&srv, "DELETE", "/v1/secrets/crm.password", Value::Null).await;
    assert_eq!(r.status, 404);
    srv.assert_no_errors(&[]);
    drop(db);
}

#[tokio::test]
async fn secrets_are_sealed_at_rest_never_shown_and_never_logged() {
    secrets_cycle(env().start().await, None).await;
}

#[tokio::test]
async fn secrets_are_sealed_at_rest_never_shown_and_never_logged_on_postgres() {
    let (env, db) = env().postgres_store();
    // A password in the store URL (trust auth ignores it) must not reach the log either.
    let url = db
        .url
        .replacen("postgres@", "postgres:URL-PASSWORD-123@", 1);
    assert_ne!(url, db.url);
    let srv = env.set("store", "url", &format!("{url:?}")).start().await;
    assert!(srv.log().contains(":***@"), "{}", srv.log());
    assert!(!srv.log().contains("URL-PASSWORD-123"), "{}", srv.log());
    secrets_cycle(srv, Some(db)).await;
}

#[tokio::test]
async fn a_server_refuses_to_start_with_another_key_than_its_secrets_were_sealed_with() {
    let srv = env().start().await;
    let r = admin(&srv, "PUT", "/v1/secrets/a", json!({"value": "x"})).await;
    assert_eq!(r.status, 201);
    let mut srv = srv;
    srv.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(srv.wait_exit(Duration::from_secs(20)), Some(0));
    let key = srv.dir.join("secret.key");
    let old = std::fs::read_to_string(&key).unwrap();
    // Another key: refused, naming both key ids.
    std::fs::write(&key, "ab".repeat(32)).unwrap();
    let mut srv = srv.spawn_again();
    assert_eq!(srv.wait_exit(Duration::from_secs(20)), Some(1));
    assert!(srv.log().contains("were sealed with key"), "{}", srv.log());
    // No key at all: not silently recreated.
    std::fs::remove_file(&key).unwrap();
    let mut srv = srv.spawn_again();
    assert_eq!(srv.wait_exit(Duration::from_secs(20)), Some(1));
    assert!(srv.log().contains("is missing"), "{}", srv.log());
    assert!(!key.exists());
    // The right key again: it starts and the secret is there.
    std::fs::write(&key, old).unwrap();
    let srv = srv.spawn_again();
    srv.wait_ready().await;
    let list = admin(&srv, "GET", "/v1/secrets", Value::Null).await.json();
    assert_eq!(list["secrets"][0]["name"], "a");
}

/// Channels, secrets and modules; export; wipe with an empty `--replace` import; import the
/// export; export again: the same document.
async fn round_trip(srv: Server, _db: Option<PgDatabase>) {
    // Two parameterised routes that both match /cfg/1/x: the first created wins, and must
    // still win after the round trip. Named and unnamed channels, one raw.
    for ch in [
        json!({"url_path": "/cfg/hello", "service": "cfg.hello", "methods": ["GET"], "data_format": "raw"}),
        // Named to sort after "params": an export by name would swap them.
        json!({"name": "z-first", "url_path": "/cfg/{id}/x", "service": "cfg.hello", "methods": ["GET"]}),
        json!({"name": "params", "url_path": "/cfg/{item_id}/{name}", "service": "test.params", "methods": ["GET"]}),
    ] {
        let r = admin(&srv, "POST", "/v1/channels", ch).await;
        assert_eq!(r.status, 201, "{:?}", r.body);
    }
    let r = admin(&srv, "PUT", "/v1/secrets/s1", json!({"value": PLAIN})).await;
    assert_eq!(r.status, 201);
    let r = admin(
        &srv,
        "POST",
        "/v1/modules",
        json!({"modules": [{"name": "cfg", "source": MODULE}]}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(srv.get("/cfg/hello").await.status, 200);
    assert_eq!(srv.get("/cfg/1/x").await.json()["hello"], "from cfg");
    assert_eq!(srv.get("/cfg/1/y").await.json()["name"], "y");

    let first = srv.dir.join("first.yaml");
    ok(&cli(
        &srv,
        &["config", "export", "-f", first.to_str().unwrap()],
        None,
    ));
    let first_text = std::fs::read_to_string(&first).unwrap();
    assert!(first_text.contains("channel_rest:"), "{first_text}");
    assert!(first_text.contains("class Hello(Service):"), "{first_text}");

    // Wipe: an empty document with --replace deletes every stored object.
    let empty = srv.dir.join("empty.yaml");
    std::fs::write(&empty, "channel_rest: []\n").unwrap();
    let out = ok(&cli(
        &srv,
        &["config", "import", "--replace", empty.to_str().unwrap()],
        None,
    ));
    assert!(out.contains("delete channel_rest /cfg/hello"), "{out}");
    assert!(out.contains("delete secret s1"), "{out}");
    assert!(out.contains("delete service_module cfg"), "{out}");
    assert_eq!(srv.get("/cfg/hello").await.status, 404);
    // server.toml's channels are not the store's: the wipe leaves them serving.
    assert_eq!(srv.post_json("/echo", &json!({"a": 1})).await.status, 200);
    let bare = admin(&srv, "GET", "/v1/config", Value::Null).await.json();
    assert_eq!(bare["channel_rest"], json!([]));
    assert_eq!(bare["secret"], json!([]));
    assert_eq!(bare["service_module"], json!([]));

    // A dry run changes nothing.
    let v = config_version(&srv).await;
    let out = ok(&cli(
        &srv,
        &["config", "import", "--dry-run", first.to_str().unwrap()],
        None,
    ));
    assert!(out.contains("would create service_module cfg"), "{out}");
    assert_eq!(config_version(&srv).await, v);
    assert_eq!(srv.get("/cfg/hello").await.status, 404);

    // Import: everything back, serving at once; the second import changes nothing.
    let out = ok(&cli(
        &srv,
        &["config", "import", first.to_str().unwrap()],
        None,
    ));
    assert!(out.starts_with("create "), "{out}");
    assert!(out.contains("5 changes"), "{out}");
    assert_eq!(
        config_version(&srv).await,
        v + 1,
        "one transaction, one version"
    );
    let r = srv.get("/cfg/hello").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["hello"], "from cfg");
    assert_eq!(
        srv.get("/cfg/1/x").await.json()["hello"],
        "from cfg",
        "routing order kept"
    );
    assert_eq!(srv.get("/cfg/1/y").await.json()["name"], "y");
    let out = ok(&cli(
        &srv,
        &["config", "import", first.to_str().unwrap()],
        None,
    ));
    assert!(out.starts_with("0 changes, 5 unchanged"), "{out}");

    let second = srv.dir.join("second.yaml");
    ok(&cli(
        &srv,
        &["config", "export", "-f", second.to_str().unwrap()],
        None,
    ));
    assert_eq!(
        export_body(&std::fs::read_to_string(&second).unwrap()),
        export_body(&first_text)
    );
    srv.assert_no_errors(&[]);
}

#[tokio::test]
async fn export_wipe_import_yields_the_same_config() {
    round_trip(env().start().await, None).await;
}

#[tokio::test]
async fn export_wipe_import_yields_the_same_config_on_postgres() {
    let (env, db) = env().postgres_store();
    round_trip(env.start().await, Some(db)).await;
}

#[tokio::test]
async fn an_import_is_validated_in_full_before_anything_changes() {
    let srv = env().start().await;
    let v = config_version(&srv).await;
    let file = srv.dir.join("bad.yaml");
    let import = |text: &str| {
        std::fs::write(&file, text).unwrap();
        cli(&srv, &["config", "import", file.to_str().unwrap()], None)
    };

    // A good channel and secret beside a module that does not import: 422 + traceback.
    let out = import(&format!(
        "channel_rest:\n- url_path: /new\n  service: cfg.hello\nsecret:\n- name: s\n  value: {PLAIN}\n\
         service_module:\n- name: broken\n  source: \"import no_such_module_anywhere\\n\"\n"
    ));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no_such_module_anywhere"), "{err}");
    assert!(err.contains("HTTP 422"), "{err}");

    // A good module beside a channel that clashes with server.toml's /echo: 400, named.
    let out = import(&format!(
        "channel_rest:\n- url_path: /echo\n  service: cfg.hello\n  methods: [POST]\n\
         service_module:\n- name: cfg\n  source: {}\n",
        serde_json::to_string(MODULE).unwrap()
    ));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/echo") && err.contains("HTTP 400"), "{err}");

    // A secret that is not a string, a sealed value from nowhere, an unknown kind, bad YAML.
    for (text, says) in [
        ("secret:\n- name: s\n  value: 12345\n", "must be a string"),
        (
            "secret:\n- name: s\n  sealed: oxbus1:0000000000000000:00:00\n",
            "was sealed with key",
        ),
        ("channels:\n- url_path: /x\n", "unknown field"),
        ("channel_rest: [\n", "not valid YAML"),
        (
            "channel_rest:\n- url_path: /a\n  service: x\n- url_path: /a\n  service: y\n",
            "listed twice",
        ),
        (
            "secret:\n- name: s\n  value: a\n- name: s\n  value: b\n",
            "listed twice",
        ),
        (
            "secret:\n- name: bad name\n  value: a\n",
            "not a valid secret name",
        ),
        ("secret: 12345-hunter\n", "expected a list"),
        ("channel_rest: 12345-hunter\n", "invalid type"),
        (
            "service_module:\n- name: m\n  source: ''\n- name: m\n  source: ''\n",
            "listed twice",
        ),
        (
            "service_module:\n- name: 1bad\n  source: ''\n",
            "not a valid Python module name",
        ),
        (
            "channel_rest:\n- url_path: /a/{x}\n  service: s\n- url_path: /a/{y}\n  service: t\n",
            "duplicates",
        ),
    ] {
        let out = import(text);
        assert_eq!(out.status.code(), Some(1), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{text} -> {err}");
        assert!(!err.contains("12345"), "a value quoted back: {err}");
    }

    // A channel may not take a server.toml channel's name (the harness names /echo's "/echo").
    let r = admin(
        &srv,
        "POST",
        "/v1/channels",
        json!({"name": "/echo", "url_path": "/other", "service": "x"}),
    )
    .await;
    assert_eq!(r.status, 409, "{:?}", r.body);

    // Nothing of any of it was written.
    assert_eq!(config_version(&srv).await, v);
    assert_eq!(srv.get("/new").await.status, 404);
    let doc = admin(&srv, "GET", "/v1/config", Value::Null).await.json();
    assert_eq!(doc["service_module"], json!([]));
    assert_eq!(doc["secret"], json!([]));
    assert_eq!(srv.get("/echo").await.status, 405);
}

/// The CLI's admin API URL variable is OXBUS_URL; OXBUS_SERVER, its old name (it read like
/// an OXBUS_SERVER_<KEY> setting), still works with a warning. The export's header gives the
/// whole import command, with the --server it was exported through (never the token).
#[tokio::test]
async fn the_cli_reads_oxbus_server_with_a_warning_and_the_export_names_its_target() {
    let srv = env().start().await;
    let url = format!("http://127.0.0.1:{}", srv.admin_port());
    let out = Command::new(oxbus_bin())
        .args(["config", "export"])
        .env_remove("OXBUS_URL")
        .env("OXBUS_SERVER", &url)
        .env("OXBUS_TOKEN", srv.admin_token())
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("OXBUS_SERVER is deprecated") && stderr.contains("OXBUS_URL"),
        "{stderr}"
    );
    assert!(
        stdout.contains(&format!(
            "#   oxbus config import --server {url} --token TOKEN FILE\n"
        )),
        "{stdout}"
    );
    assert!(!stdout.contains(&srv.admin_token()), "{stdout}");
    // OXBUS_URL: no warning.
    let out = cli(&srv, &["config", "export"], None);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("deprecated"));
}

/// A client command whose standard output is a pipe nobody reads any more (`oxbus config
/// export | head -3`) ends quietly, as Unix tools do, not with a panic and a backtrace from
/// `println!`: exit code 0, nothing on standard error. It ignores SIGPIPE (the signal
/// would also end it silently when the server closes the connection mid-request).
#[tokio::test]
async fn a_client_command_ends_quietly_when_its_reader_is_gone() {
    let srv = env().start().await;
    // The pipe's read end is closed before the command starts: its first write fails.
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    let out = Command::new(oxbus_bin())
        .args(["config", "export"])
        .env(
            "OXBUS_URL",
            format!("http://127.0.0.1:{}", srv.admin_port()),
        )
        .env("OXBUS_TOKEN", srv.admin_token())
        .stdout(Stdio::from(write))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{:?} {stderr}", out.status);
    assert_eq!(stderr, "");
}
