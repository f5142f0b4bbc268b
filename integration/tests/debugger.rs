//! Debug mode (`[debug] port`, `oxbus server --debug`): the one worker runs under debugpy,
//! installed in a venv of its own as a user's service venv would have it, and a client
//! speaking the Debug Adapter Protocol (as VS Code and PyCharm do) sets a breakpoint in a
//! module deployed from a file with `oxbus deploy`, sees a request stop there with the
//! service's locals, and resumes it. Without debugpy in the interpreter the server refuses
//! to start, saying how to install it.
//!
//! The venv is made once under target/ and reused; making it needs PyPI (reachable here and
//! in CI). If it cannot be made, the test fails loudly: it never skips.

use oxbus_integration::*;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

fn debugpy_venv() -> PathBuf {
    package_venv("test-venv-debugpy", "debugpy", "debugpy")
}

/// A DAP client: Content-Length framed JSON over TCP, messages kept until asked for.
struct Dap {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    seq: i64,
    backlog: VecDeque<Value>,
}

impl Dap {
    async fn connect(port: u16) -> Dap {
        let stream = eventually(
            Duration::from_secs(30),
            "debugpy's port to accept",
            || async { TcpStream::connect(("127.0.0.1", port)).await.ok() },
        )
        .await;
        let (r, w) = stream.into_split();
        Dap {
            reader: BufReader::new(r),
            writer: w,
            seq: 0,
            backlog: VecDeque::new(),
        }
    }

    async fn send(&mut self, command: &str, arguments: Value) -> i64 {
        self.seq += 1;
        let msg = json!({"seq": self.seq, "type": "request", "command": command,
                         "arguments": arguments});
        let body = serde_json::to_vec(&msg).unwrap();
        let mut frame = format!("Content-Length: {}\r\n\r\n", body.len()).into_bytes();
        frame.extend_from_slice(&body);
        self.writer.write_all(&frame).await.unwrap();
        self.seq
    }

    async fn read_one(&mut self) -> Value {
        let mut len = None;
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).await.unwrap();
            assert!(n > 0, "debugpy closed the connection");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = Some(v.trim().parse::<usize>().unwrap());
            }
        }
        let mut body = vec![0; len.expect("a Content-Length header")];
        self.reader.read_exact(&mut body).await.unwrap();
        serde_json::from_slice(&body).unwrap()
    }

    /// The first message (kept or new) `pred` accepts; the others are kept.
    async fn wait(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.backlog.iter().position(&pred) {
            return self.backlog.remove(i).unwrap();
        }
        let read = async {
            loop {
                let m = self.read_one().await;
                if pred(&m) {
                    return m;
                }
                self.backlog.push_back(m);
            }
        };
        match tokio::time::timeout(Duration::from_secs(60), read).await {
            Ok(m) => m,
            Err(_) => panic!(
                "no {what} from debugpy within 60 s; got {:#?}",
                self.backlog
            ),
        }
    }

    async fn response(&mut self, seq: i64) -> Value {
        let r = self
            .wait(&format!("response to request {seq}"), |m| {
                m["type"] == "response" && m["request_seq"] == seq
            })
            .await;
        assert_eq!(r["success"], true, "{r:#}");
        r
    }

    async fn request(&mut self, command: &str, arguments: Value) -> Value {
        let seq = self.send(command, arguments).await;
        self.response(seq).await
    }

    /// Connects, attaches as an IDE does and sets one breakpoint at `file`:`line`, which
    /// debugpy must report verified; returns once the attach is complete.
    async fn attach_with_breakpoint(port: u16, file: &std::path::Path, line: u64) -> Dap {
        let mut dap = Dap::connect(port).await;
        dap.request(
            "initialize",
            json!({"clientID": "oxbus-test", "adapterID": "debugpy", "pathFormat": "path",
                   "linesStartAt1": true, "columnsStartAt1": true}),
        )
        .await;
        let attach = dap.send("attach", json!({"justMyCode": true})).await;
        dap.event("initialized").await;
        let bp = dap
            .request(
                "setBreakpoints",
                json!({"source": {"path": file}, "breakpoints": [{"line": line}]}),
            )
            .await;
        assert_eq!(bp["body"]["breakpoints"][0]["verified"], true, "{bp:#}");
        dap.request("configurationDone", json!({})).await;
        dap.response(attach).await;
        dap
    }

    async fn event(&mut self, event: &str) -> Value {
        self.wait(&format!("{event} event"), |m| {
            m["type"] == "event" && m["event"] == event
        })
        .await
    }
}

/// `POST /add` with `body`, in a task of its own (it waits at the breakpoint).
fn post_add(port: u16, body: &'static [u8]) -> tokio::task::JoinHandle<Resp> {
    tokio::spawn(async move {
        let mut c = Client::connect(port).await.unwrap();
        c.request(
            "POST",
            "/add",
            &[("Content-Type", "application/json")],
            bytes::Bytes::from_static(body),
        )
        .await
        .unwrap()
    })
}

/// The `stopped` event of the breakpoint; fails at once, saying so, if the request ends
/// without stopping.
async fn stop_at_breakpoint<T>(
    dap: &mut Dap,
    call: &tokio::task::JoinHandle<T>,
    which: &str,
) -> Value {
    let stopped = tokio::select! {
        m = dap.event("stopped") => m,
        _ = async {
            while !call.is_finished() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        } => panic!("{which}: the request ended without stopping at the breakpoint; debugpy said {:#?}", dap.backlog),
    };
    assert_eq!(
        stopped["body"]["reason"], "breakpoint",
        "{which}: {stopped:#}"
    );
    stopped
}

const SERVICE: &str = r#"from oxbus import Service


class Add(Service):
    name = 'dbg.add'

    def handle(self):
        a = self.request.payload['a']
        b = self.request.payload['b']
        total = a + b
        self.response.payload = {'total': total}
"#;

const OTHER: &str = r#"from oxbus import Service


class Other(Service):
    name = 'dbg.other'

    def handle(self):
        self.response.payload = {'other': True}
"#;

/// The line of `total = a + b` in SERVICE.
const BREAK_LINE: u64 = 10;

#[tokio::test]
async fn a_breakpoint_in_a_deployed_module_stops_a_request_until_resumed() {
    assert_eq!(
        SERVICE.lines().nth(BREAK_LINE as usize - 1).map(str::trim),
        Some("total = a + b")
    );
    let python = debugpy_venv();
    let port = proxy::free_port();
    let srv = Env::new()
        .python(python.to_str().unwrap())
        .workers(2)
        .set("debug", "port", &port.to_string())
        // Short: a worker stopped at a breakpoint misses many; debug mode keeps it anyway.
        .set("workers", "heartbeat_ms", "100")
        // Short too: a deploy while the worker is stopped fails at it, and must cost nothing.
        .set("deploy", "check_timeout_ms", "1000")
        .channel("/add", &["POST"], "dbg.add")
        .start()
        .await;
    // One worker, whatever server.workers says: every call reaches the debugged one.
    let pids = srv.worker_pids();
    assert_eq!(pids.len(), 1, "{}", srv.log());
    assert!(
        srv.log().contains("debug mode: one worker, under debugpy"),
        "{}",
        srv.log()
    );

    // Deployed from a file, as a user would: the breakpoint is set in that file.
    let dir = std::env::temp_dir().join(format!(
        "oxbus-debugger-{}-{}",
        std::process::id(),
        next_id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("dbg.py");
    std::fs::write(&file, SERVICE).unwrap();
    let file = std::fs::canonicalize(&file).unwrap();
    let out = srv.cli(&["deploy", file.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");

    let mut dap = Dap::attach_with_breakpoint(port, &file, BREAK_LINE).await;
    let port_http = srv.port();
    let call = post_add(port_http, br#"{"a": 2, "b": 3}"#);
    let stopped = stop_at_breakpoint(&mut dap, &call, "first worker").await;
    let thread = stopped["body"]["threadId"].clone();
    let trace = dap
        .request("stackTrace", json!({"threadId": thread, "levels": 1}))
        .await;
    let top = &trace["body"]["stackFrames"][0];
    assert_eq!(top["source"]["path"], file.to_str().unwrap(), "{trace:#}");
    assert_eq!(top["line"], BREAK_LINE, "{trace:#}");
    assert_eq!(top["name"], "handle", "{trace:#}");
    let frame = top["id"].clone();
    let value = dap
        .request(
            "evaluate",
            json!({"expression": "(a, b, self.name)", "frameId": frame, "context": "repl"}),
        )
        .await;
    assert_eq!(value["body"]["result"], "(2, 3, 'dbg.add')", "{value:#}");

    // Stopped well past three heartbeats (debug mode must not kill the worker for it), and
    // the request waits at the breakpoint meanwhile.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !call.is_finished(),
        "the request ended while stopped at the breakpoint"
    );
    // A deploy meanwhile (a file saved while debugging) cannot be checked by the stopped
    // worker: it fails at its deadline, and the worker is kept for the work after it.
    let other = dir.join("dbg_other.py");
    std::fs::write(&other, OTHER).unwrap();
    let out = srv.cli(&["deploy", other.to_str().unwrap()]);
    assert!(!out.status.success(), "{out:?}");
    dap.request("continue", json!({"threadId": thread})).await;
    let resp = tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("the request to end once resumed")
        .unwrap();
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    assert_eq!(resp.json(), json!({"total": 5}));
    assert_eq!(srv.worker_pids(), pids, "the debugged worker was replaced");
    let out = srv.cli(&["deploy", other.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let r = srv
        .admin(
            "POST",
            "/v1/invoke/dbg.other",
            Some(&srv.admin_token()),
            b"{}",
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json(), json!({"other": true}));

    dap.request("disconnect", json!({"terminateDebuggee": false}))
        .await;
    drop(dap);
    // Detached: requests run through without stopping.
    let r = srv.post_json("/add", &json!({"a": 40, "b": 2})).await;
    assert_eq!(r.json(), json!({"total": 42}));

    // A reload (SIGHUP) starts the new worker while the old one, whose debug adapter holds
    // the port, drains: the new one takes the port once it is free, and breakpoints work
    // there too.
    srv.signal(nix::sys::signal::Signal::SIGHUP);
    let new_pids = eventually(Duration::from_secs(60), "the reloaded worker alone", || {
        let now = srv.worker_pids();
        let changed = now.len() == 1 && now != pids;
        async move { changed.then_some(now) }
    })
    .await;
    let listening = format!("listening on 127.0.0.1:{port}");
    eventually(Duration::from_secs(60), "the new worker's debugpy", || {
        let n = srv.log().matches(&listening).count();
        async move { (n == 2).then_some(()) }
    })
    .await;
    let mut dap = Dap::attach_with_breakpoint(port, &file, BREAK_LINE).await;
    let call = post_add(port_http, br#"{"a": 1, "b": 1}"#);
    let stopped = stop_at_breakpoint(&mut dap, &call, "reloaded worker").await;
    let thread = stopped["body"]["threadId"].clone();
    dap.request("continue", json!({"threadId": thread})).await;
    let resp = tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("the request to end once resumed")
        .unwrap();
    assert_eq!(resp.json(), json!({"total": 2}));
    assert_eq!(srv.worker_pids(), new_pids);
    dap.request("disconnect", json!({"terminateDebuggee": false}))
        .await;
    drop(dap);
    srv.assert_no_errors(&[]);

    // Once the server stops, nothing holds the debugger's port (debugpy's adapter runs in
    // child of the worker).
    drop(srv);
    eventually(
        Duration::from_secs(30),
        "the debugger's port to be free",
        || async {
            std::net::TcpListener::bind(("127.0.0.1", port))
                .ok()
                .map(|_| ())
        },
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn debug_mode_without_debugpy_is_refused_saying_how_to_install_it() {
    // The test venv's interpreter has no debugpy.
    let python = String::from_utf8(
        Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_owned();
    let has = Command::new(&python)
        .args(["-c", "import debugpy"])
        .output()
        .unwrap()
        .status
        .success();
    assert!(
        !has,
        "{python} has debugpy: this test needs an interpreter without it"
    );
    let port = proxy::free_port();
    let mut srv = Env::new()
        .python(&python)
        .set("debug", "port", &port.to_string())
        .spawn();
    let code = srv.wait_exit(Duration::from_secs(60));
    // EX_CONFIG: systemd does not restart it (RestartPreventExitStatus=78).
    assert_eq!(code, Some(78), "{}", srv.log());
    let log = srv.log();
    assert!(
        log.contains("debug mode needs debugpy in the workers' interpreter")
            && log.contains(&format!("{python} -m pip install -U debugpy")),
        "{log}"
    );
}

#[tokio::test]
async fn a_debug_port_that_is_taken_is_refused_naming_it() {
    let python = debugpy_venv();
    let taken = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut srv = Env::new()
        .python(python.to_str().unwrap())
        .set("debug", "port", &port.to_string())
        .spawn();
    let code = srv.wait_exit(Duration::from_secs(60));
    assert_eq!(code, Some(1), "{}", srv.log());
    assert!(
        srv.log().contains(&format!(
            "cannot listen for the debugger on 127.0.0.1:{port}"
        )),
        "{}",
        srv.log()
    );
}
