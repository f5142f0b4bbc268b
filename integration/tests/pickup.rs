//! Deploy-on-save against the real binary, real workers and real file-system events: the
//! server's pickup directory, and `oxbus deploy --watch DIR`.

use oxbus_integration::api::config_version;
use oxbus_integration::*;
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn module(version: u32) -> String {
    format!(
        r#"from oxbus import Service


class Hello(Service):
    name = 'hot.hello'

    def handle(self):
        self.response.payload = {{'version': {version}}}
"#
    )
}

fn env() -> Env {
    Env::new()
        .workers(2)
        .pickup()
        .channel("/hot", &["GET"], "hot.hello")
        .channel("/chunk", &["GET"], "chunk.answer")
}

async fn admin_json(srv: &Server, path: &str) -> (u16, Value) {
    let r = srv.admin("GET", path, Some(&srv.admin_token()), b"").await;
    let doc = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    (r.status, doc)
}

/// The active version of a module, None while it is not deployed.
async fn active_version(srv: &Server, name: &str) -> Option<i64> {
    let (status, doc) = admin_json(srv, &format!("/v1/modules/{name}")).await;
    (status == 200).then(|| doc["version"].as_i64().unwrap())
}

/// Waits until GET `path` answers 200 with `field` = `want`.
async fn wait_served(srv: &Server, path: &str, field: &str, want: Value) {
    let what = format!("GET {path} to answer {field} = {want}");
    eventually(WAIT, &what, || {
        let want = want.clone();
        async move {
            let r = srv.get(path).await;
            (r.status == 200 && r.json()[field] == want).then_some(())
        }
    })
    .await;
}

async fn wait_log(srv: &Server, text: &str) {
    eventually(WAIT, &format!("{text:?} in the log"), || async move {
        srv.log().contains(text).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_module_saved_into_the_pickup_dir_serves() {
    pickup_cycle(env().start().await).await;
}

#[tokio::test]
async fn a_module_saved_into_the_pickup_dir_serves_on_postgres() {
    let (env, _db) = env().postgres_store();
    pickup_cycle(env.start().await).await;
}

async fn pickup_cycle(srv: Server) {
    let dir = srv.pickup_dir();
    assert!(dir.is_dir(), "the server creates its pickup directory");
    std::fs::write(dir.join("hot.py"), module(1)).unwrap();
    wait_served(&srv, "/hot", "version", json!(1)).await;
    let (_, doc) = admin_json(&srv, "/v1/modules/hot").await;
    assert_eq!(doc["version"], 1);
    let (_, list) = admin_json(&srv, "/v1/modules").await;
    assert_eq!(list["modules"][0]["deployed_by"], "pickup");
    // The log says what happened: the version and each worker's acknowledgement (written
    // once the deploy returns, which may be after the new version serves).
    wait_log(&srv, "pickup: deployed").await;
    let lines = srv.log_lines("pickup: deployed");
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].contains("hot v1") && lines[0].contains("ok"),
        "{}",
        lines[0]
    );

    let pids = srv.worker_pids();
    std::fs::write(dir.join("hot.py"), module(2)).unwrap();
    wait_served(&srv, "/hot", "version", json!(2)).await;
    assert_eq!(srv.worker_pids(), pids, "a deploy must not restart workers");

    // A restart deploys what the directory holds, but nothing changed: no new version.
    let srv = srv.restart().await;
    wait_log(&srv, "pickup: unchanged").await;
    assert_eq!(active_version(&srv, "hot").await, Some(2));
    wait_served(&srv, "/hot", "version", json!(2)).await;
    srv.assert_no_errors(&[]);
}

#[tokio::test]
async fn a_file_written_in_chunks_is_deployed_only_once_complete() {
    let srv = env().start().await;
    let dir = srv.pickup_dir();
    // Every prefix of the file at a chunk boundary is a valid module with its own answer,
    // so a deploy of a half-written file would be seen.
    let chunks = [
        "from oxbus import Service\n\nANSWER = 'partial'\n\n\nclass Answer(Service):\n    name = 'chunk.answer'\n\n    def handle(self):\n        self.response.payload = {'answer': ANSWER}\n",
        "\nANSWER = 'almost'\n",
        "\nANSWER = 'complete'\n",
    ];
    let mut f = std::fs::File::create(dir.join("chunked.py")).unwrap();
    for (i, chunk) in chunks.iter().enumerate() {
        f.write_all(chunk.as_bytes()).unwrap();
        f.flush().unwrap();
        if i + 1 == chunks.len() {
            break;
        }
        // The writer pauses with the file open. Another module saved meanwhile is deployed
        // (so the watcher has gone through a whole quiet period and a deploy), while the
        // open file is not.
        let marker = format!("marker{i}");
        std::fs::write(dir.join(format!("{marker}.py")), "X = 1\n").unwrap();
        eventually(WAIT, &format!("{marker} deployed"), || {
            let srv = &srv;
            let marker = marker.clone();
            async move { active_version(srv, &marker).await.map(drop) }
        })
        .await;
        assert_eq!(
            active_version(&srv, "chunked").await,
            None,
            "a file still open for writing was deployed after chunk {}",
            i + 1
        );
    }
    drop(f);
    wait_served(&srv, "/chunk", "answer", json!("complete")).await;
    let (_, doc) = admin_json(&srv, "/v1/modules/chunked").await;
    assert_eq!(doc["version"], 1, "exactly one version of chunked: {doc}");
    assert_eq!(doc["source"], chunks.concat());
    wait_log(&srv, "pickup: deployed modules=chunked").await;
    let lines: Vec<String> = srv
        .log_lines("pickup: deployed")
        .into_iter()
        .filter(|l| l.contains("chunked"))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    srv.assert_no_errors(&[]);
}

#[tokio::test]
async fn a_refused_file_logs_its_traceback_and_the_old_version_keeps_serving() {
    let srv = env().start().await;
    let dir = srv.pickup_dir();
    std::fs::write(dir.join("hot.py"), module(1)).unwrap();
    wait_served(&srv, "/hot", "version", json!(1)).await;
    let before = config_version(&srv).await;

    // A file name that is no module name: a clear error, not a crash.
    std::fs::write(dir.join("bad-name.py"), module(7)).unwrap();
    wait_log(&srv, "bad-name.py is not deployed").await;

    std::fs::write(
        dir.join("hot.py"),
        "from oxbus import Service\n\ndef broken(:\n",
    )
    .unwrap();
    wait_log(&srv, "SyntaxError").await;
    let refused = srv.unexpected_errors(&[]);
    assert!(
        refused.iter().any(|l| l.contains("pickup: deploy refused")),
        "the refusal is logged at ERROR level: {refused:#?}"
    );
    let log = srv.log();
    let at = log.find("pickup: deploy refused").unwrap();
    // It names the file in the pickup directory (the module's origin), line and all.
    let file = std::fs::canonicalize(dir.join("hot.py")).unwrap();
    assert!(
        log[at..].contains(&format!("File \"{}\", line 3", file.display())),
        "the traceback follows the refusal:\n{}",
        &log[at..]
    );
    for _ in 0..5 {
        assert_eq!(srv.get("/hot").await.json()["version"], 1);
    }
    assert_eq!(active_version(&srv, "hot").await, Some(1));
    assert_eq!(
        config_version(&srv).await,
        before,
        "a refusal changes nothing"
    );

    // The fix deploys as the next version.
    std::fs::write(dir.join("hot.py"), module(2)).unwrap();
    wait_served(&srv, "/hot", "version", json!(2)).await;
    assert_eq!(active_version(&srv, "hot").await, Some(2));
    assert_eq!(srv.worker_pids().len(), 2);
    srv.assert_no_errors(&["pickup: deploy refused", "bad-name.py is not deployed"]);
}

/// Writes `source` the way git and many editors do: a temp file, then a rename into place.
fn write_renamed(dir: &Path, temp: &str, name: &str, source: &str) {
    let tmp = dir.join(temp);
    let mut f = std::fs::File::create(&tmp).unwrap();
    f.write_all(source.as_bytes()).unwrap();
    f.sync_all().unwrap();
    drop(f);
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

#[tokio::test]
async fn a_git_pull_like_burst_is_one_deploy() {
    let srv = env().start().await;
    let dir = srv.pickup_dir();
    wait_log(&srv, "pickup: watching").await;
    let before = config_version(&srv).await;
    // burst_b needs burst_a's new helper: deployed apart, in the wrong order, it fails.
    let files = [
        (
            "burst_b.py",
            "from oxbus import Service\nfrom burst_a import helper\n\n\nclass B(Service):\n    name = 'burst.b'\n\n    def handle(self):\n        self.response.payload = {'b': helper()}\n",
        ),
        ("burst_a.py", "def helper():\n    return 'a'\n"),
        ("burst_c.py", "C = 3\n"),
        ("burst_d.py", "D = 4\n"),
    ];
    for (i, (name, source)) in files.iter().enumerate() {
        // git's and rsync's temp names are dotfiles; one editor here uses a *.py temp name.
        let temp = if i == 3 {
            "tmp_burst_d.py".to_owned()
        } else {
            format!(".{name}.tmp{i}")
        };
        write_renamed(&dir, &temp, name, source);
    }
    std::fs::write(dir.join("burst_c.py~"), "backup, never deployed\n").unwrap();
    eventually(WAIT, "all four modules deployed", || {
        let srv = &srv;
        async move {
            let (_, list) = admin_json(srv, "/v1/modules").await;
            (list["modules"].as_array().unwrap().len() == 4).then_some(list)
        }
    })
    .await;
    let (_, list) = admin_json(&srv, "/v1/modules").await;
    let names: Vec<&str> = list["modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["burst_a", "burst_b", "burst_c", "burst_d"]);
    assert_eq!(
        config_version(&srv).await,
        before + 1,
        "one deploy, one config version"
    );
    wait_log(&srv, "pickup: deployed").await;
    let lines = srv.log_lines("pickup: deployed");
    assert_eq!(lines.len(), 1, "{lines:#?}");
    for m in ["burst_a v1", "burst_b v1", "burst_c v1", "burst_d v1"] {
        assert!(lines[0].contains(m), "{m} in {}", lines[0]);
    }
    let r = srv
        .admin(
            "POST",
            "/v1/invoke/burst.b",
            Some(&srv.admin_token()),
            b"{}",
        )
        .await;
    assert_eq!(r.json()["b"], "a");
    srv.assert_no_errors(&[]);
}

#[tokio::test]
async fn a_pickup_dir_is_created_but_not_its_missing_parent() {
    let mut srv = Env::new()
        .set("pickup", "dir", "\"no/such/parent/pickup\"")
        .spawn();
    let code = srv.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(1), "log:\n{}", srv.log());
    let log = srv.log();
    assert!(
        log.contains("pickup directory") && log.contains("does not exist, nor does its parent"),
        "{log}"
    );
}

/// `oxbus deploy --watch` running as a child; killed if the test fails.
struct WatchCli {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl WatchCli {
    fn start(srv: &Server, dir: &Path, args: &[&str]) -> WatchCli {
        let mut child = Command::new(oxbus_bin())
            .args(["deploy", "--watch"])
            .arg(dir)
            .args(args)
            .env(
                "OXBUS_URL",
                format!("http://127.0.0.1:{}", srv.admin_port()),
            )
            .env("OXBUS_TOKEN", srv.admin_token())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let lines = lines.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stream)
                    .lines()
                    .map_while(Result::ok)
                {
                    lines.lock().unwrap().push(line);
                }
            });
        }
        WatchCli { child, lines }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits for an output line matching `f`; returns it.
    async fn wait_line(&self, what: &str, f: impl Fn(&str) -> bool) -> String {
        eventually(WAIT, what, || {
            let found = self.lines().into_iter().find(|l| f(l));
            async move { found }
        })
        .await
    }

    /// Sends SIGINT (Ctrl-C) and waits for the exit code.
    async fn interrupt(mut self) -> (Option<i32>, Vec<String>) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .unwrap();
        let status = eventually(WAIT, "deploy --watch to exit", || {
            let st = self.child.try_wait().unwrap();
            async move { st }
        })
        .await;
        (status.code(), self.lines())
    }
}

impl Drop for WatchCli {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "----- deploy --watch output -----\n{}",
                self.lines().join("\n")
            );
        }
    }
}

fn event(line: &str) -> Option<Value> {
    serde_json::from_str::<Value>(line).ok()
}

#[tokio::test]
async fn deploy_watch_deploys_on_save_until_ctrl_c() {
    let srv = Env::new()
        .workers(2)
        .channel("/hot", &["GET"], "hot.hello")
        .start()
        .await;
    let dir: PathBuf = srv.dir.join("src");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hot.py"), module(1)).unwrap();

    // JSON output: one object per event line.
    let cli = WatchCli::start(&srv, &dir, &["--output", "json"]);
    let deployed_v = |v: i64| {
        move |l: &str| {
            event(l).is_some_and(|e| {
                e["event"] == "deployed"
                    && e["modules"][0]["name"] == "hot"
                    && e["modules"][0]["version"] == v
            })
        }
    };
    let line = cli.wait_line("hot v1 deployed", deployed_v(1)).await;
    let e = event(&line).unwrap();
    assert_eq!(e["ok"], true);
    assert_eq!(e["workers"].as_array().unwrap().len(), 2);
    assert!(e["ms"].as_f64().unwrap() > 0.0);
    wait_served(&srv, "/hot", "version", json!(1)).await;

    std::fs::write(dir.join("hot.py"), module(2)).unwrap();
    cli.wait_line("hot v2 deployed", deployed_v(2)).await;
    wait_served(&srv, "/hot", "version", json!(2)).await;

    let (code, lines) = cli.interrupt().await;
    assert_eq!(code, Some(0), "{lines:#?}");
    let stdout_events = lines.iter().filter(|l| event(l).is_some()).count();
    assert_eq!(stdout_events, 2, "one line per deploy: {lines:#?}");

    // Text output, started again: what is there is unchanged; a broken save is refused
    // with its traceback and the old version keeps serving; a fix deploys.
    let cli = WatchCli::start(&srv, &dir, &[]);
    cli.wait_line("unchanged", |l| l == "unchanged: hot").await;
    std::fs::write(dir.join("hot.py"), "def broken(:\n").unwrap();
    cli.wait_line("refused", |l| l.starts_with("refused:"))
        .await;
    cli.wait_line("the traceback", |l| l.contains("SyntaxError"))
        .await;
    assert_eq!(srv.get("/hot").await.json()["version"], 2);
    std::fs::write(dir.join("hot.py"), module(3)).unwrap();
    cli.wait_line("hot v3 deployed", |l| l.starts_with("deployed hot v3"))
        .await;
    wait_served(&srv, "/hot", "version", json!(3)).await;
    let (code, lines) = cli.interrupt().await;
    assert_eq!(code, Some(0), "{lines:#?}");

    // Usage: --watch and files together is a usage error; a missing directory a reason.
    let out = Command::new(oxbus_bin())
        .args(["deploy", "--watch", "x", "a.py"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(oxbus_bin())
        .args(["deploy", "--watch"])
        .arg(srv.dir.join("nowhere"))
        .env(
            "OXBUS_URL",
            format!("http://127.0.0.1:{}", srv.admin_port()),
        )
        .env("OXBUS_TOKEN", srv.admin_token())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot watch") && err.contains("nowhere"),
        "{err}"
    );
}
