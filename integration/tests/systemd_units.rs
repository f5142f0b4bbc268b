//! `oxbus systemd install` writes units that systemd's own checker accepts (and the check
//! catches a broken unit), and `oxbus reload --pid` — the units' `ExecReload=` — waits for
//! a real server's rolling restart and fails when the reload fails, times out, or the pid
//! is no oxbus server.

use oxbus_integration::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

fn tmp_dir(what: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("oxbus-{what}-{}-{}", std::process::id(), next_id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn oxbus(args: &[&str]) -> Output {
    Command::new(oxbus_bin()).args(args).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const UNITS: [&str; 4] = [
    "oxbus@.service",
    "oxbus-proxy.service",
    "oxbus-dashboard.service",
    "oxbus.target",
];

/// `systemd-analyze verify` on the units of `dir`: its exit code and stderr. Warnings such
/// as an unknown key or a value it cannot parse go to stderr with exit code 0; a missing
/// executable is exit code 1.
fn verify(dir: &Path) -> (i32, String) {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg("--man=no")
        .args(UNITS.iter().map(|u| dir.join(u)))
        .output()
        .expect("systemd-analyze");
    (out.status.code().unwrap_or(-1), text(&out.stderr))
}

fn has_systemd_analyze() -> bool {
    let found = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("systemd-analyze not found: the units are not verified");
    }
    found
}

#[test]
fn installed_units_pass_systemd_analyze_verify() {
    let dir = tmp_dir("units");
    let units = dir.join("system");
    let out = oxbus(&[
        "systemd",
        "install",
        "--unit-dir",
        units.to_str().unwrap(),
        "--config-dir",
        "/etc/oxbus",
        "--user",
        "oxbus",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    for u in UNITS {
        let path = units.join(u);
        assert!(
            stdout.contains(&format!("wrote {}\n", path.display())),
            "{stdout}"
        );
        let unit = std::fs::read_to_string(&path).unwrap();
        assert!(
            !unit.contains("@OXBUS@") && !unit.contains("@USER@"),
            "{unit}"
        );
    }
    assert!(stdout.contains("systemctl daemon-reload"), "{stdout}");
    assert!(
        stdout.contains("systemctl enable --now oxbus@NAME"),
        "{stdout}"
    );
    let server = std::fs::read_to_string(units.join("oxbus@.service")).unwrap();
    // The binary is this build's: systemd-analyze checks that it exists.
    let bin = std::fs::canonicalize(oxbus_bin()).unwrap();
    assert!(
        server.contains(&format!(
            "\nExecStart={} server --config /etc/oxbus/%i/server.toml\n",
            bin.display()
        )),
        "{server}"
    );
    if !has_systemd_analyze() {
        return;
    }
    assert_eq!(
        verify(&units),
        (0, String::new()),
        "the units do not verify"
    );

    // The check catches broken units. A key systemd 252 does not know (or a value it cannot
    // parse) is only a warning: stderr says so, the exit code stays 0.
    let broken = dir.join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    for u in UNITS {
        std::fs::copy(units.join(u), broken.join(u)).unwrap();
    }
    let path = broken.join("oxbus@.service");
    std::fs::write(
        &path,
        server.replace("\nType=notify\n", "\nType=notify-reload\n"),
    )
    .unwrap();
    let (code, stderr) = verify(&broken);
    assert_eq!(code, 0);
    assert!(
        stderr.contains("Failed to parse service type, ignoring: notify-reload"),
        "{stderr}"
    );
    std::fs::write(&path, server.replace("\nWatchdogSec=", "\nWatchdogSecs=")).unwrap();
    let (_, stderr) = verify(&broken);
    assert!(stderr.contains("Unknown key 'WatchdogSecs'"), "{stderr}");
    // An executable that does not exist: exit code 1.
    let out = oxbus(&[
        "systemd",
        "install",
        "--unit-dir",
        broken.to_str().unwrap(),
        "--bin",
        "/nonexistent/oxbus",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (code, stderr) = verify(&broken);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("Command /nonexistent/oxbus is not executable"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn install_refuses_bad_input_and_dry_run_writes_nothing() {
    let dir = tmp_dir("units-bad");
    let units = dir.join("system");
    for (args, want) in [
        (
            vec!["--unit-dir", "relative/dir"],
            "--unit-dir relative/dir: must be an absolute path",
        ),
        (
            vec!["--unit-dir", units.to_str().unwrap(), "--user", "bad user"],
            "--user \"bad user\": a user name is 1 to 32",
        ),
        (
            vec![
                "--unit-dir",
                units.to_str().unwrap(),
                "--config-dir",
                "etc/oxbus",
            ],
            "--config-dir etc/oxbus: must be an absolute path",
        ),
    ] {
        let out = oxbus(&[&["systemd", "install"][..], &args].concat());
        assert_eq!(out.status.code(), Some(1));
        let stderr = text(&out.stderr);
        assert!(stderr.contains(want), "{stderr}");
        assert!(!units.exists(), "written despite the error");
    }
    let out = oxbus(&[
        "systemd",
        "install",
        "--dry-run",
        "--unit-dir",
        units.to_str().unwrap(),
        "--bin",
        "/usr/bin/oxbus",
        "--user",
        "svc",
    ]);
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "# would write {}",
            units.join("oxbus@.service").display()
        )),
        "{stdout}"
    );
    assert!(stdout.contains("\nUser=svc\n"), "{stdout}");
    assert!(!units.exists(), "--dry-run wrote files");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Its import waits for the file `$RELOAD_TEST_GATE`, and fails while `<gate>.broken`
/// exists: the test decides when new workers become ready, or whether they can.
const GATED: &str = r#"import os
import time

from oxbus import Service

_gate = os.environ['RELOAD_TEST_GATE']
if os.path.exists(_gate + '.broken'):
    raise RuntimeError('broken on purpose')
_deadline = time.monotonic() + 120
while not os.path.exists(_gate):
    if time.monotonic() > _deadline:
        raise TimeoutError('the test never opened ' + _gate)
    time.sleep(0.02)


class Pid(Service):
    name = 'rl.pid'

    def handle(self):
        self.response.payload = os.getpid()
"#;

/// The pids of the workers that serve (ready), with their generation.
async fn serving(srv: &Server) -> Vec<(u64, u64)> {
    let info = srv
        .admin("GET", "/v1/info", Some(&srv.admin_token()), b"")
        .await
        .json();
    info["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["state"] == "ready")
        .map(|w| {
            (
                w["pid"].as_u64().unwrap(),
                w["generation"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn reload(pid: u32, timeout: &str) -> Output {
    oxbus(&["reload", "--pid", &pid.to_string(), "--timeout", timeout])
}

#[tokio::test]
async fn reload_waits_for_the_rolling_restart_and_reports_failures() {
    let gates = tmp_dir("reload-gate");
    let gate = gates.join("gate");
    std::fs::write(&gate, b"").unwrap();
    let srv = Env::new()
        .workers(2)
        .service("rl.py", GATED)
        .channel("/pid", &["GET"], "rl.pid")
        .env("RELOAD_TEST_GATE", gate.to_str().unwrap())
        .start()
        .await;
    let pid = srv.pid();
    let old = serving(&srv).await;
    assert_eq!(old.len(), 2);

    // Done: it returns once the new generation serves, every worker replaced.
    let out = reload(pid, "60");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(&format!("server {pid} reloaded in ")),
        "{}",
        text(&out.stdout)
    );
    assert!(text(&out.stdout).contains("worker generation 2 serving"));
    let new = serving(&srv).await;
    assert_eq!(new.len(), 2, "{new:?}");
    assert!(
        new.iter()
            .all(|(p, g)| *g == 2 && !old.iter().any(|(o, _)| o == p))
    );
    eventually(Duration::from_secs(30), "the old workers to exit", || {
        let left = living(&old.iter().map(|(p, _)| *p as u32).collect::<Vec<_>>());
        async move { left.is_empty().then_some(()) }
    })
    .await;

    // Timed out: the new workers cannot import their services yet.
    std::fs::remove_file(&gate).unwrap();
    let out = reload(pid, "1");
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("the reload did not finish within 1s"),
        "{stderr}"
    );
    assert_eq!(
        srv.get("/readyz").await.status,
        200,
        "generation 2 serves on"
    );
    // That reload goes on; the next one waits for it, then does its own.
    std::fs::write(&gate, b"").unwrap();
    let out = reload(pid, "60");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("worker generation 4 serving"),
        "{}",
        text(&out.stdout)
    );

    // Failed: the new workers cannot import their services; the old ones serve on.
    let before = serving(&srv).await;
    std::fs::write(gates.join("gate.broken"), b"").unwrap();
    let out = reload(pid, "60");
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("the reload failed, the previous workers serve on")
            && stderr.contains("the services could not be imported"),
        "{stderr}"
    );
    assert_eq!(serving(&srv).await, before);
    assert_eq!(srv.get("/pid").await.status, 200);
    std::fs::remove_file(gates.join("gate.broken")).unwrap();

    // Not an oxbus server: refused, and no SIGHUP sent (it would kill `sleep`).
    let mut sleep = Command::new("sleep").arg("60").spawn().unwrap();
    let out = reload(sleep.id(), "5");
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "process {} (sleep 60) is not an oxbus server",
            sleep.id()
        )) && stderr.contains("no signal sent"),
        "{stderr}"
    );
    assert!(
        sleep.try_wait().unwrap().is_none(),
        "the process got a signal"
    );
    sleep.kill().unwrap();
    sleep.wait().unwrap();
    let out = reload(i32::MAX as u32, "5");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("there is no process"));
    srv.assert_no_errors(&[
        "could not be imported",
        "broken on purpose",
        "handshake failed",
    ]);
    drop(srv);
    std::fs::remove_dir_all(&gates).unwrap();
}
