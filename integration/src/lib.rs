//! Test harness: starts the real `oxbus` binary with real Python workers in a temp dir and
//! talks HTTP to it.
//!
//! ```text
//! let srv = Env::new().workers(2).service("svc.py", SRC).channel("/x", &["GET"], "svc.x").start().await;
//! let r = srv.get("/x").await;
//! ```
//!
//! Each [`Server`] listens on port 0 (the harness reads the bound port from the log), lives in
//! its own temp dir, and on drop kills the server and its workers, checks that none is left
//! behind, and prints the server log if the test failed.

use bytes::Bytes;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod api;
pub mod bus;
pub mod dashboard;
pub mod prom;
pub mod proxy;
pub mod rabbit;
pub mod raw;
pub mod relay;
pub mod upstream;
pub mod versioned;

mod pg;
mod procs;

pub use pg::{PgDatabase, PrivatePg, port_outside_ephemeral_range};
use procs::alive;
pub use procs::{children_of, living};

/// A cluster secret file of 48+ bytes, its own to this call (the tag is in its name and its
/// content, so two secrets of one test differ), shared by the servers given it.
pub fn cluster_secret(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!(
        "oxbus-it-secret-{}-{}-{tag}",
        std::process::id(),
        next_id()
    ));
    std::fs::write(&p, format!("{tag}-{}", "s3cr3t".repeat(8))).unwrap();
    p
}

/// Path of the `oxbus` binary under test.
pub fn oxbus_bin() -> PathBuf {
    if let Ok(p) = std::env::var("OXBUS_BIN") {
        return PathBuf::from(p);
    }
    // integration tests run from target/<profile>/deps
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("oxbus");
    assert!(
        bin.exists(),
        "{} not found: run `cargo build -p oxbus-supervisor` first (cargo test --workspace does)",
        bin.display()
    );
    bin
}

/// Repository root.
/// The interpreter of a venv `target/<dir>` with `package` installed from PyPI (as a user's
/// service venv would have it): made once and reused while `import <module>` works. Making
/// it needs PyPI (reachable here and in CI); if it cannot be made, the test fails loudly:
/// it never skips.
pub fn package_venv(dir: &str, package: &str, module: &str) -> PathBuf {
    let dir = repo_root().join("target").join(dir);
    let py = dir.join("bin/python");
    let imports = |py: &PathBuf| {
        Command::new(py)
            .args(["-c", &format!("import {module}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if py.exists() && imports(&py) {
        return py;
    }
    let st = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(st.success(), "python3 -m venv {} failed", dir.display());
    let st = Command::new(dir.join("bin/pip"))
        .args(["install", "-q", "--disable-pip-version-check", package])
        .status()
        .unwrap();
    assert!(
        st.success(),
        "pip install {package} into {} failed",
        dir.display()
    );
    assert!(
        imports(&py),
        "{module} does not import in {}",
        dir.display()
    );
    py
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Python services of the integration tests.
pub const TEST_SERVICES: &str = include_str!("testsvc.py");

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A number unique within this test process (for temp dir names).
pub fn next_id() -> u32 {
    COUNTER.fetch_add(1, Ordering::SeqCst)
}

/// Builder of a server environment.
#[derive(Debug, Clone)]
pub struct Env {
    workers: u32,
    settings: Vec<(String, String, String)>,
    services: Vec<(String, String)>,
    channels: Vec<String>,
    python: Option<String>,
    env: Vec<(String, String)>,
    cwd: Option<PathBuf>,
    relative_config: bool,
    umask: Option<u32>,
}

impl Default for Env {
    fn default() -> Self {
        Self::new()
    }
}

impl Env {
    pub fn new() -> Env {
        Env {
            workers: 1,
            settings: Vec::new(),
            services: Vec::new(),
            channels: Vec::new(),
            python: None,
            env: Vec::new(),
            cwd: None,
            relative_config: false,
            umask: None,
        }
    }

    /// A member of the cluster whose store is at `url`: server `name`, its cluster bus on a
    /// free port, authenticated by the secret in `secret` ([`cluster_secret`]).
    pub fn cluster_member(self, url: &str, name: &str, secret: &Path) -> Self {
        self.set("store", "url", url)
            .set("cluster", "server", &format!("{name:?}"))
            .set(
                "cluster",
                "secret_file",
                &format!("{:?}", secret.display().to_string()),
            )
            .set("cluster", "bus_listen", "\"127.0.0.1:0\"")
    }

    pub fn workers(mut self, n: u32) -> Self {
        self.workers = n;
        self
    }

    /// A setting, e.g. `.set("http", "max_body_bytes", "100")` (value is TOML).
    pub fn set(mut self, section: &str, key: &str, value: &str) -> Self {
        self.settings
            .push((section.into(), key.into(), value.into()));
        self
    }

    /// A file in the services directory.
    pub fn service(mut self, file: &str, source: &str) -> Self {
        self.services.push((file.into(), source.into()));
        self
    }

    pub fn channel(self, path: &str, methods: &[&str], service: &str) -> Self {
        self.channel_fmt(path, methods, service, "json")
    }

    pub fn channel_fmt(mut self, path: &str, methods: &[&str], service: &str, fmt: &str) -> Self {
        let methods: Vec<String> = methods.iter().map(|m| format!("{m:?}")).collect();
        self.channels.push(format!(
            "[[channels]]\nurl_path = {path:?}\nmethods = [{}]\nservice = {service:?}\ndata_format = {fmt:?}\n",
            methods.join(", ")
        ));
        self
    }

    /// A JSON-RPC channel at `path` that may call `services` (empty = any).
    pub fn jsonrpc_channel(mut self, path: &str, services: &[&str]) -> Self {
        let services: Vec<String> = services.iter().map(|s| format!("{s:?}")).collect();
        self.channels.push(format!(
            "[[channels]]\ntype = \"jsonrpc\"\nurl_path = {path:?}\nservices = [{}]\n",
            services.join(", ")
        ));
        self
    }

    /// A `[[channels]]` entry written as given (TOML, without the header line).
    pub fn channel_toml(mut self, body: &str) -> Self {
        self.channels.push(format!("[[channels]]\n{body}\n"));
        self
    }

    /// Deploys `testsvc.py` (the services the tests use) with a channel for each.
    pub fn with_test_services(self) -> Self {
        self.service("testsvc.py", TEST_SERVICES)
            .channel("/echo", &["POST"], "test.echo")
            .channel("/items/{item_id}/{name}", &["GET"], "test.params")
            .channel("/boom", &["GET"], "test.boom")
            .channel("/refuse", &["GET"], "test.refuse")
            .channel("/headers", &["GET"], "test.headers")
            .channel("/sleep", &["GET"], "test.sleep")
            .channel("/gate", &["GET"], "test.gate")
            .channel("/barrier", &["GET"], "test.barrier")
            .channel("/pid", &["GET"], "test.pid")
            .channel("/spin", &["GET"], "test.spin")
            .channel("/log", &["GET"], "test.log")
            .channel("/caller", &["GET"], "test.caller")
            .channel("/verbs", &[], "test.verbs")
            .channel("/async", &["POST"], "test.async")
    }

    /// A pickup directory `pickup/` in the environment (the server creates it).
    pub fn pickup(self) -> Self {
        self.set("pickup", "dir", "\"pickup\"")
    }

    pub fn python(mut self, interpreter: &str) -> Self {
        self.python = Some(interpreter.into());
        self
    }

    /// Uses a fresh database on the machine's PostgreSQL (OXBUS_TEST_PG, default
    /// postgres://postgres@127.0.0.1:5432/test) as the config store. The database is dropped
    /// when the returned guard is dropped. Fails loudly when PostgreSQL is not there.
    pub fn postgres_store(self) -> (Self, PgDatabase) {
        let db = PgDatabase::create();
        let url = db.url.clone();
        (self.set("store", "url", &format!("{url:?}")), db)
    }

    /// The working directory the server is started from.
    pub fn cwd(mut self, dir: &Path) -> Self {
        self.cwd = Some(dir.to_owned());
        self
    }

    /// Starts the server from its config's directory with `--config server.toml`.
    pub fn relative_config(mut self) -> Self {
        self.relative_config = true;
        self
    }

    /// Starts the server with this umask instead of the test runner's.
    pub fn umask(mut self, mask: u32) -> Self {
        self.umask = Some(mask);
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// Writes the environment into a fresh temp dir; returns (dir, config path).
    pub fn write(&self) -> (PathBuf, PathBuf) {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("oxbus-it-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("services")).unwrap();
        for (f, src) in &self.services {
            std::fs::write(dir.join("services").join(f), src).unwrap();
        }
        // [server] defaults, replaced by any .set("server", …) of the same key.
        let mut server: Vec<(String, String)> = vec![
            ("listen".into(), "\"127.0.0.1:0\"".into()),
            ("workers".into(), self.workers.to_string()),
            (
                "python".into(),
                format!("{:?}", self.python.as_deref().unwrap_or("python3")),
            ),
            ("log_level".into(), "\"info\"".into()),
        ];
        // The admin API on a free port too, so that tests run in parallel.
        let mut sections: Vec<(String, Vec<(String, String)>)> = vec![(
            "admin".into(),
            vec![("listen".into(), "\"127.0.0.1:0\"".into())],
        )];
        for (sec, k, v) in &self.settings {
            let list = if sec == "server" {
                &mut server
            } else {
                match sections.iter().position(|(s, _)| s == sec) {
                    Some(i) => &mut sections[i].1,
                    None => {
                        sections.push((sec.clone(), Vec::new()));
                        &mut sections.last_mut().unwrap().1
                    }
                }
            };
            list.retain(|(key, _)| key != k);
            list.push((k.clone(), v.clone()));
        }
        let mut toml = String::from("[server]\n");
        for (k, v) in &server {
            toml.push_str(&format!("{k} = {v}\n"));
        }
        for (sec, list) in &sections {
            toml.push_str(&format!("\n[{sec}]\n"));
            for (k, v) in list {
                toml.push_str(&format!("{k} = {v}\n"));
            }
        }
        for c in &self.channels {
            toml.push('\n');
            toml.push_str(c);
        }
        let config = dir.join("server.toml");
        std::fs::write(&config, toml).unwrap();
        (dir, config)
    }

    /// Starts the server and waits until `/readyz` answers 200.
    pub async fn start(&self) -> Server {
        let srv = self.spawn();
        srv.wait_ready().await;
        srv
    }

    /// Starts the server without waiting.
    pub fn spawn(&self) -> Server {
        let (dir, config) = self.write();
        self.spawn_in(dir, config)
    }

    fn spawn_in(&self, dir: PathBuf, config: PathBuf) -> Server {
        // With `umask(…)`: through a shell that sets it and then becomes the server (`exec`:
        // the same pid), since this crate has no unsafe code for a `pre_exec`.
        let mut cmd = match self.umask {
            Some(mask) => {
                let mut c = Command::new("/bin/sh");
                c.arg("-c")
                    .arg(format!("umask {mask:03o} && exec \"$0\" \"$@\""))
                    .arg(oxbus_bin());
                c
            }
            None => Command::new(oxbus_bin()),
        };
        // `relative_config()` runs it the way an operator in the config's directory would:
        // `--config server.toml`, a path with no directory part.
        let config_arg = if self.relative_config {
            PathBuf::from("server.toml")
        } else {
            config.clone()
        };
        cmd.arg("server")
            .arg("--config")
            .arg(&config_arg)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if self.relative_config {
            cmd.current_dir(&dir);
        } else if let Some(d) = &self.cwd {
            cmd.current_dir(d);
        }
        let mut child = cmd.spawn().expect("spawn oxbus");
        let log = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        for stream in [
            Box::new(child.stderr.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stdout.take().unwrap()),
        ] {
            let log = log.clone();
            readers.push(std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stream)
                    .lines()
                    .map_while(Result::ok)
                {
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            }));
        }
        Server {
            child: Some(child),
            env: self.clone(),
            config,
            dir,
            log,
            readers: Mutex::new(readers),
            port: Mutex::new(None),
        }
    }
}

/// A running `oxbus server`.
#[derive(Debug)]
pub struct Server {
    child: Option<Child>,
    env: Env,
    config: PathBuf,
    pub dir: PathBuf,
    log: Arc<Mutex<String>>,
    readers: Mutex<Vec<std::thread::JoinHandle<()>>>,
    port: Mutex<Option<u16>>,
}

/// A response, fully read.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap_or("").to_owned())
    }
    pub fn cid(&self) -> String {
        self.header("x-oxbus-cid").expect("X-Oxbus-CID header")
    }
}

/// The first value of the log field `key`, from the first line that has it: `key=value` in
/// the text format, the top-level or `fields` key of a line that starts with `{` (the JSON
/// format, `server.log_format = "json"`).
fn logged_field(log: &str, key: &str) -> Option<String> {
    let text = format!("{key}=");
    log.lines().find_map(|line| {
        if line.starts_with('{') {
            let v: serde_json::Value = serde_json::from_str(line).ok()?;
            let found = v.get(key).or_else(|| v.get("fields")?.get(key))?;
            return match found {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Null => None,
                other => Some(other.to_string()),
            };
        }
        let i = line.find(&text)? + text.len();
        Some(
            line[i..]
                .chars()
                .take_while(|c| !c.is_whitespace())
                .collect(),
        )
    })
}

/// Polls `f` until it returns `Some`, or panics after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > end {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The port the server bound (read from its start-up log line).
    pub fn port(&self) -> u16 {
        if let Some(p) = *self.port.lock().unwrap() {
            return p;
        }
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let log = self.log();
            if let Some(addr) = logged_field(&log, "listen") {
                let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
                *self.port.lock().unwrap() = Some(port);
                return port;
            }
            if Instant::now() > end {
                panic!("server never logged its listen address; log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The port of the admin API (read from the start-up log line).
    pub fn admin_port(&self) -> u16 {
        self.port();
        let log = self.log();
        let addr = logged_field(&log, "admin").expect("admin address in the log");
        addr.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// The pickup directory of [`Env::pickup`].
    pub fn pickup_dir(&self) -> PathBuf {
        self.dir.join("pickup")
    }

    /// Lines of the log that contain `text`.
    pub fn log_lines(&self, text: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(text))
            .map(str::to_owned)
            .collect()
    }

    /// The admin token the server created in its directory.
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.dir.join("admin.token"))
            .expect("admin.token")
            .trim()
            .to_owned()
    }

    /// A request to the admin API; `token` None sends no Authorization header.
    pub async fn admin(&self, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> Resp {
        let mut c = Client::connect(self.admin_port()).await.unwrap();
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers: Vec<(&str, &str)> = vec![("content-type", "application/json")];
        if let Some(a) = &auth {
            headers.push(("authorization", a));
        }
        c.request(method, path, &headers, Bytes::copy_from_slice(body))
            .await
            .unwrap_or_else(|e| panic!("admin {method} {path} failed: {e}; log:\n{}", self.log()))
    }

    pub async fn wait_ready(&self) {
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = self.try_request("GET", "/readyz", &[], Bytes::new()).await
                && r.status == 200
            {
                return;
            }
            if let Some(code) = self.try_exit_code() {
                panic!(
                    "server exited with {code:?} before ready; log:\n{}",
                    self.log()
                );
            }
            if Instant::now() > end {
                panic!("server not ready in 60 s; log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn try_exit_code(&self) -> Option<Option<i32>> {
        // Non-reaping check: /proc/<pid>/stat state Z or gone.
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).ok()?;
        let state = stat.rsplit(')').next()?.split_whitespace().next()?;
        (state == "Z").then_some(None)
    }

    pub async fn try_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> anyhow::Result<Resp> {
        let mut c = Client::connect(self.port()).await?;
        c.request(method, path, headers, body).await
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Resp {
        self.try_request(method, path, headers, Bytes::copy_from_slice(body))
            .await
            .unwrap_or_else(|e| panic!("{method} {path} failed: {e}; log:\n{}", self.log()))
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.request("GET", path, &[], b"").await
    }

    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> Resp {
        self.request(
            "POST",
            path,
            &[("content-type", "application/json")],
            body.to_string().as_bytes(),
        )
        .await
    }

    /// Pids of the worker processes (children of the server).
    pub fn worker_pids(&self) -> Vec<u32> {
        children_of(self.pid())
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig).unwrap();
    }

    /// Waits for the server to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut().unwrap();
        let end = Instant::now() + timeout;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                // Let the log readers reach EOF so the log holds the last lines.
                for r in self.readers.lock().unwrap().drain(..) {
                    let _ = r.join();
                }
                return st.code();
            }
            if Instant::now() > end {
                panic!(
                    "server did not exit within {timeout:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server (SIGTERM, exit 0 expected) and starts it again on the same
    /// directory, settings and store; returns the new server once ready.
    pub async fn restart(mut self) -> Server {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        assert_eq!(
            self.wait_exit(Duration::from_secs(30)),
            Some(0),
            "log:\n{}",
            self.log()
        );
        let dir = std::mem::take(&mut self.dir);
        let config = self.config.clone();
        let env = self.env.clone();
        drop(self);
        let srv = env.spawn_in(dir, config);
        srv.wait_ready().await;
        srv
    }

    /// Starts a new server process on this one's directory, settings and store, without
    /// waiting for it to be ready; this one is stopped (killed if still running) first.
    pub fn spawn_again(mut self) -> Server {
        let dir = std::mem::take(&mut self.dir);
        let config = self.config.clone();
        let env = self.env.clone();
        drop(self);
        env.spawn_in(dir, config)
    }

    /// Lines of the log at ERROR level that contain none of `allowed`.
    pub fn unexpected_errors(&self, allowed: &[&str]) -> Vec<String> {
        self.log()
            .lines()
            // The text format, and the JSON one (`server.log_format`).
            .filter(|l| l.contains(" ERROR ") || l.contains(r#""level":"error""#))
            .filter(|l| !allowed.iter().any(|a| l.contains(a)))
            .map(str::to_owned)
            .collect()
    }

    pub fn assert_no_errors(&self, allowed: &[&str]) {
        let bad = self.unexpected_errors(allowed);
        assert!(
            bad.is_empty(),
            "unexpected ERROR lines:\n{}",
            bad.join("\n")
        );
    }

    /// Runs the `oxbus` CLI against this server's admin API (`OXBUS_URL`, `OXBUS_TOKEN`).
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(oxbus_bin())
            .args(args)
            .env(
                "OXBUS_URL",
                format!("http://127.0.0.1:{}", self.admin_port()),
            )
            .env("OXBUS_TOKEN", self.admin_token())
            .output()
            .unwrap()
    }

    /// Number of open file descriptors of the server process.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let workers = self.worker_pids();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Workers exit on their own once the server's socket closes; give them a moment,
        // then make sure none is left behind.
        let end = Instant::now() + Duration::from_secs(5);
        let mut left: Vec<u32> = workers.clone();
        while !left.is_empty() && Instant::now() < end {
            left.retain(|p| alive(*p));
            std::thread::sleep(Duration::from_millis(20));
        }
        for p in &left {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*p as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if std::thread::panicking() {
            eprintln!(
                "----- oxbus server log ({}) -----\n{}",
                self.dir.display(),
                self.log()
            );
        } else if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
            assert!(
                left.is_empty(),
                "worker processes left behind after the server exited: {left:?}"
            );
        }
    }
}

/// A keep-alive HTTP/1.1 client connection (a [`proxy::Conn`] whose errors are plain).
pub struct Client(proxy::Conn);

impl Client {
    pub async fn connect(port: u16) -> anyhow::Result<Client> {
        Ok(Client(proxy::Conn::connect(port, None).await?))
    }

    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> anyhow::Result<Resp> {
        let (status, body, headers) = self
            .0
            .send(method, path, headers, body)
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        Ok(Resp {
            status,
            headers,
            body,
        })
    }
}

#[cfg(test)]
mod logged_field_tests {
    use super::logged_field;

    #[test]
    fn the_first_line_with_the_field_wins_in_either_format() {
        // A JSON line first, a text line naming the key later: the JSON line's value.
        let log = concat!(
            r#"{"time":"t","level":"info","target":"x","cid":null,"message":"oxbus server starting","fields":{"listen":"127.0.0.1:1234"}}"#,
            "\n",
            "2026-01-01 INFO child: got listen=127.0.0.1:9999 from somewhere\n",
        );
        assert_eq!(
            logged_field(log, "listen").as_deref(),
            Some("127.0.0.1:1234")
        );
        // The text line first: its value.
        let log = concat!(
            "INFO oxbus server starting listen=127.0.0.1:1 admin=127.0.0.1:2\n",
            r#"{"fields":{"listen":"127.0.0.1:3"}}"#,
            "\n",
        );
        assert_eq!(logged_field(log, "listen").as_deref(), Some("127.0.0.1:1"));
        assert_eq!(logged_field(log, "admin").as_deref(), Some("127.0.0.1:2"));
        // Top-level keys, numbers, null (absent), and a line that is not JSON after all.
        let log = concat!(
            "{not json listen=x\n",
            r#"{"cid":null,"fields":{"port":17010}}"#,
            "\n",
            r#"{"cid":"c1"}"#,
            "\n",
        );
        assert_eq!(logged_field(log, "port").as_deref(), Some("17010"));
        assert_eq!(logged_field(log, "cid").as_deref(), Some("c1"));
        assert_eq!(logged_field(log, "listen"), None);
        assert_eq!(logged_field(log, "nothing"), None);
    }
}
