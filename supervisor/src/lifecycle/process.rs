//! Spawning a Python worker process and following it until it exits.
//!
//! Workers are spawned (never forked) in their own process group, so a Ctrl-C in the
//! terminal reaches only the server, which then decides how the workers stop. Their stdout
//! and stderr become log lines in the worker's span; the last lines of stderr are kept so
//! that a worker that dies at boot can be explained in the server's error.
//!
//! A worker's one-time IPC token reaches it on its stdin, a pipe closed right after: the
//! command line is readable by every local user (`ps`), the environment by any process of
//! the same user (`/proc/PID/environ`), a pipe by nobody else.
//!
//! The server runs with a umask of 077 ([`private_umask`]), so every file it creates (the
//! SQLite store and its `-wal`/`-shm`, the snapshot, keys, tokens, sockets) is 0600 and every
//! directory 0700 without a chmod at each site; the workers get the operator's umask back,
//! since what user code writes is the operator's business, not ours.

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
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

/// The umask the server was started with; `u32::MAX` until [`private_umask`] ran.
static OPERATOR_UMASK: AtomicU32 = AtomicU32::new(u32::MAX);

/// Sets the process umask to 077 (files 0600, directories 0700) and remembers the
/// operator's, which the workers get back. Idempotent.
pub fn private_umask() {
    use nix::sys::stat::{Mode, umask};
    let old = umask(Mode::from_bits_truncate(0o077));
    if OPERATOR_UMASK.load(Ordering::SeqCst) == u32::MAX {
        OPERATOR_UMASK.store(old.bits(), Ordering::SeqCst);
    }
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
    /// Debug mode (`[debug] port`): the worker starts debugpy on 127.0.0.1:PORT.
    pub debug_port: Option<u16>,
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
    for var in crate::lifecycle::sdnotify::SYSTEMD_VARS {
        cmd.env_remove(var);
    }
    if let Some(port) = launch.debug_port {
        // debugpy misses breakpoints in frozen modules (3.11+; older Pythons ignore an
        // unknown -X option), and says so on every start unless told not to check.
        cmd.arg("-X")
            .arg("frozen_modules=off")
            .env("OXBUS_DEBUG_PORT", port.to_string())
            .env("PYDEVD_DISABLE_FILE_VALIDATION", "1");
    }
    let mut child = cmd
        .arg("-m")
        .arg("oxbus.worker")
        .arg("--socket")
        .arg(&launch.socket)
        .arg("--worker-id")
        .arg(id.to_string())
        .env("PYTHONPATH", python_path)
        .env(
            "OXBUS_CODE_CACHE",
            crate::lifecycle::python::code_cache_dir(&launch.python_path),
        )
        .current_dir(&launch.cwd)
        .stdin(Stdio::piped())
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
    // The token, then EOF: user code that reads stdin sees an empty one, as with /dev/null.
    // (A few bytes fit the pipe's buffer, so this never waits on the worker.)
    if let Some(mut stdin) = child.stdin.take() {
        let line = format!("{token}\n");
        tokio::spawn(async move {
            let _ = stdin.write_all(line.as_bytes()).await;
        });
    }
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
    let operator_umask = OPERATOR_UMASK.load(Ordering::SeqCst);
    // SAFETY: the closure runs in the child between fork and exec; it only makes the
    // async-signal-safe syscalls prctl(2), sigaction(2), umask(2), getppid(2) and _exit(2),
    // and allocates nothing. Setting SIG_IGN replaces no Rust-installed handler in the child.
    unsafe {
        cmd.pre_exec(move || {
            // User code creates files with the operator's umask, not the server's 077.
            if operator_umask != u32::MAX {
                nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(
                    operator_umask as nix::libc::mode_t,
                ));
            }
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
