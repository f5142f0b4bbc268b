//! Spawning a Python worker process and following it until it exits.
//!
//! Workers are spawned (never forked) in their own process group, so a Ctrl-C in the
//! terminal reaches only the server, which then decides how the workers stop. Their stdout
//! and stderr become log lines in the worker's span; the last lines of stderr are kept so
//! that a worker that dies at boot can be explained in the server's error.

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tracing::{Instrument, info, warn};

/// How many stderr lines are kept for error messages.
const TAIL_LINES: usize = 40;

/// Exit codes of `python -m oxbus.worker` (see ipc-protocol/SPEC.md).
pub mod exit_code {
    pub const BAD_ARGS: i32 = 2;
    pub const IMPORT_FAILED: i32 = 3;
    pub const HANDSHAKE_REFUSED: i32 = 4;
    pub const LOST_SUPERVISOR: i32 = 5;
}

/// What is needed to start workers.
#[derive(Debug, Clone)]
pub struct Launch {
    pub python: String,
    /// The workers' working directory: the environment directory (where server.toml is),
    /// not wherever the server was started from — `python -m` puts the working directory
    /// first on `sys.path`, and a stray `.py` file there must not shadow a deployed module.
    pub cwd: PathBuf,
    pub python_path: PathBuf,
    pub socket: PathBuf,
}

/// The last lines a worker wrote to stderr.
#[derive(Debug, Clone, Default)]
pub struct StderrTail(Arc<Mutex<VecDeque<String>>>);

impl StderrTail {
    fn push(&self, line: String) {
        let mut q = self.0.lock().expect("tail lock");
        if q.len() == TAIL_LINES {
            q.pop_front();
        }
        q.push_back(line);
    }

    pub fn text(&self) -> String {
        let q = self.0.lock().expect("tail lock");
        q.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

/// Starts a worker; returns its pid, its stderr tail and a future resolving to its exit.
pub fn spawn(
    launch: &Launch,
    id: u32,
    generation: u64,
    token: &str,
) -> std::io::Result<(
    u32,
    StderrTail,
    tokio::task::JoinHandle<std::io::Result<ExitStatus>>,
)> {
    let mut python_path = launch.python_path.as_os_str().to_owned();
    if let Some(existing) = std::env::var_os("PYTHONPATH").filter(|p| !p.is_empty()) {
        python_path.push(":");
        python_path.push(existing);
    }
    let mut cmd = Command::new(&launch.python);
    kill_with_parent(&mut cmd);
    // systemd's variables are the server's, not the workers' (sd_notify(3)).
    for var in crate::sdnotify::SYSTEMD_VARS {
        cmd.env_remove(var);
    }
    let mut child = cmd
        .arg("-m")
        .arg("oxbus.worker")
        .arg("--socket")
        .arg(&launch.socket)
        .arg("--worker-id")
        .arg(id.to_string())
        .arg("--token")
        .arg(token)
        .env("PYTHONPATH", python_path)
        .env(
            "OXBUS_CODE_CACHE",
            crate::python::code_cache_dir(&launch.python_path),
        )
        .current_dir(&launch.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            // A missing working directory fails the spawn with the same ENOENT as a missing
            // interpreter: say which it was.
            let msg = if !launch.cwd.is_dir() {
                format!(
                    "cannot start Python interpreter {:?}: its working directory {:?} is not a directory ({e})",
                    launch.python, launch.cwd
                )
            } else {
                format!("cannot start Python interpreter {:?}: {e}", launch.python)
            };
            std::io::Error::new(e.kind(), msg)
        })?;
    let pid = child.id().unwrap_or(0);
    let span = tracing::info_span!("worker", id, pid, generation);
    let tail = StderrTail::default();
    if let Some(out) = child.stdout.take() {
        tokio::spawn(
            async move {
                let mut lines = BufReader::new(out).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    info!(target: "oxbus::worker::stdout", "{line}");
                }
            }
            .instrument(span.clone()),
        );
    }
    if let Some(err) = child.stderr.take() {
        let tail = tail.clone();
        tokio::spawn(
            async move {
                let mut lines = BufReader::new(err).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    warn!(target: "oxbus::worker::stderr", "{line}");
                    tail.push(line);
                }
            }
            .instrument(span),
        );
    }
    let waiter = tokio::spawn(async move { child.wait().await });
    Ok((pid, tail, waiter))
}

/// Makes the kernel SIGKILL the worker if the server dies without stopping it (SIGKILL,
/// OOM kill): the worker would notice the closed socket anyway, but a worker stuck in a
/// C extension would not, and an orphan holding memory is worse than a dead worker. Also
/// makes the worker ignore stop signals meant for the server.
#[allow(unsafe_code)]
fn kill_with_parent(cmd: &mut Command) {
    let parent = std::process::id() as i32;
    // SAFETY: the closure runs in the child between fork and exec; it only makes the
    // async-signal-safe syscalls prctl(2), sigaction(2), getppid(2) and _exit(2), and
    // allocates nothing. Setting SIG_IGN replaces no Rust-installed handler in the child.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
            // systemd's default stop signals every process of the unit and a terminal's
            // Ctrl-C the whole foreground group: the server alone decides how a worker
            // stops (DRAIN or SIGKILL). Ignored dispositions survive exec, so the worker is
            // covered from its first instruction.
            for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
                nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigIgn)
                    .map_err(std::io::Error::from)?;
            }
            // The server may have died between fork and prctl.
            if nix::unistd::getppid().as_raw() != parent {
                nix::libc::_exit(exit_code::LOST_SUPERVISOR);
            }
            Ok(())
        });
    }
}

/// Sends a signal to a worker; a pid that is already gone is not an error.
pub fn signal(pid: u32, sig: Signal) {
    if pid > 1 {
        let _ = kill(Pid::from_raw(pid as i32), sig);
    }
}

/// Resident set size of a process in bytes, from /proc.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let statm =
        std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map(|v| v as u64)
        .unwrap_or(4096)
}
