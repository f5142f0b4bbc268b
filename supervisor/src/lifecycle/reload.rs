//! Reloads (SIGHUP: a rolling restart of the workers) seen from outside: the server keeps
//! counts of the reloads it started and finished, and answers them on a small control
//! socket; `oxbus reload --pid PID` (systemd's `ExecReload=`) sends SIGHUP and waits on it
//! until the reload is done, and fails when it failed or took too long.
//!
//! The socket is an abstract Unix socket named after the server's pid
//! (`@oxbus/server/<pid>/reload`): found from the pid alone, whatever the server's
//! settings (its admin port may be 0, its config file may have changed since it started),
//! gone with the process. It answers one JSON line ([`Status`]) and closes; only this
//! server's user and root get an answer. The client checks the pid of the socket's owner,
//! so another process cannot pose as the server.

use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The control socket's name in the abstract namespace.
pub fn socket_name(pid: u32) -> String {
    format!("oxbus/server/{pid}/reload")
}

/// What the control socket answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    /// The generation of workers serving.
    pub generation: u64,
    /// Reloads started (SIGHUPs acted on; one during a reload is ignored).
    pub started: u64,
    /// Reloads over, done or failed.
    pub finished: u64,
    pub failed: u64,
    /// A reload is in progress.
    pub reloading: bool,
    /// The server is shutting down (SIGHUP is ignored).
    pub stopping: bool,
    /// Why the last reload failed, if it did.
    pub last_error: Option<String>,
}

/// The server's side: the supervisor loop records, the control socket reads.
#[derive(Debug, Default)]
pub struct Reloads(Mutex<Status>);

impl Reloads {
    pub fn new(generation: u64) -> Arc<Reloads> {
        Arc::new(Reloads(Mutex::new(Status {
            pid: std::process::id(),
            generation,
            ..Status::default()
        })))
    }

    fn with(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.0.lock().expect("reloads lock"));
    }

    pub fn status(&self) -> Status {
        self.0.lock().expect("reloads lock").clone()
    }

    /// A reload to `generation` started.
    pub fn started(&self) {
        self.with(|s| {
            s.started += 1;
            s.reloading = true;
        });
    }

    /// The reload is done: `generation` serves.
    pub fn done(&self, generation: u64) {
        self.with(|s| {
            s.finished += 1;
            s.reloading = false;
            s.generation = generation;
            s.last_error = None;
        });
    }

    /// The reload failed: the previous generation serves on.
    pub fn failed(&self, why: &str) {
        self.with(|s| {
            s.finished += 1;
            s.failed += 1;
            s.reloading = false;
            s.last_error = Some(why.to_owned());
        });
    }

    pub fn stopping(&self) {
        self.with(|s| s.stopping = true);
    }
}

fn abstract_addr(pid: u32) -> std::io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    std::os::unix::net::SocketAddr::from_abstract_name(socket_name(pid).as_bytes())
}

/// Binds this process's control socket.
pub fn bind() -> std::io::Result<tokio::net::UnixListener> {
    let l = std::os::unix::net::UnixListener::bind_addr(&abstract_addr(std::process::id())?)?;
    l.set_nonblocking(true)?;
    tokio::net::UnixListener::from_std(l)
}

/// Answers the control socket until the process ends.
pub async fn serve(listener: tokio::net::UnixListener, reloads: Arc<Reloads>) {
    let me = nix::unistd::geteuid().as_raw();
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let allowed = stream
            .peer_cred()
            .is_ok_and(|c| c.uid() == me || c.uid() == 0);
        if !allowed {
            tracing::debug!("reload status asked by another user: refused");
            continue;
        }
        let mut line = serde_json::to_vec(&reloads.status()).unwrap_or_default();
        line.push(b'\n');
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&line)).await;
    }
}

/// Why a control socket gave no status.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// No such socket, or it broke.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Another process holds the socket's name.
    #[error("the socket belongs to pid {owner}, not {pid}")]
    NotOwner { owner: i32, pid: u32 },
    /// The server did not answer in time.
    #[error("no answer within 2 s")]
    NoAnswer,
    /// The answer is not a [`Status`].
    #[error("unexpected answer: {0}")]
    Answer(#[source] serde_json::Error),
}

/// Why `oxbus reload` failed (its text is the line the CLI prints).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// No live process has the pid.
    #[error("there is no process {0}")]
    NoProcess(u32),
    /// The process has no reload socket: not an oxbus server (no signal sent).
    #[error(
        "process {pid} ({command}) is not an oxbus server: it has no reload socket @{socket} ({source}); no signal sent"
    )]
    NotAServer {
        pid: u32,
        command: String,
        socket: String,
        source: QueryError,
    },
    /// A reload already in progress outlasted the timeout.
    #[error("a reload already in progress did not finish within {0:?}; no new one started")]
    Busy(Duration),
    /// The status could not be read.
    #[error("cannot read the server's reload status: {0}")]
    Status(#[source] QueryError),
    /// The server is gone.
    #[error("server {0} exited")]
    Exited(u32),
    /// The server is stopping.
    #[error("server {0} is shutting down: not reloading")]
    Stopping(u32),
    /// SIGHUP could not be sent.
    #[error("cannot send SIGHUP to {pid}: {source}")]
    Signal { pid: u32, source: nix::errno::Errno },
    /// The server exited while reloading.
    #[error("server {pid} exited during the reload ({source})")]
    ExitedDuring { pid: u32, source: QueryError },
    /// The reload failed (the server's reason).
    #[error("the reload failed, the previous workers serve on: {0}")]
    Failed(String),
    /// The server began stopping while reloading.
    #[error("server {0} began shutting down during the reload")]
    StoppingDuring(u32),
    /// The server did not start the reload in time.
    #[error("server {pid} did not start a reload within {timeout:?}")]
    NotStarted { pid: u32, timeout: Duration },
    /// The reload is still going on at the timeout.
    #[error(
        "the reload did not finish within {0:?}: the new workers are not ready yet (the server goes on with it; the previous workers serve meanwhile)"
    )]
    NotFinished(Duration),
}

/// The control socket's answer, from the process `pid` and no other.
async fn query(pid: u32) -> Result<Status, QueryError> {
    let std = std::os::unix::net::UnixStream::connect_addr(&abstract_addr(pid)?)?;
    std.set_nonblocking(true)?;
    let mut stream = tokio::net::UnixStream::from_std(std)?;
    let owner = stream.peer_cred()?.pid().unwrap_or(0);
    if owner != pid as i32 {
        return Err(QueryError::NotOwner { owner, pid });
    }
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut buf))
        .await
        .map_err(|_| QueryError::NoAnswer)??;
    serde_json::from_slice(&buf).map_err(QueryError::Answer)
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .and_then(|s| s.split_whitespace().next())
            != Some("Z")
    })
}

fn command_line(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// `oxbus reload --pid PID`: SIGHUP to the server `pid`, then waits until the rolling
/// restart it starts is over (a reload already in progress is waited for first, then a new
/// one is started). Ok with the status once the new generation serves; Err when `pid` is no
/// oxbus server (no signal is sent then), the reload failed, the server stopped or exited,
/// or `timeout` passed.
pub async fn reload(pid: u32, timeout: Duration) -> Result<Status, ReloadError> {
    let deadline = Instant::now() + timeout;
    let poll = Duration::from_millis(50);
    if pid == 0 || !alive(pid) {
        return Err(ReloadError::NoProcess(pid));
    }
    let mut before = query(pid).await.map_err(|source| {
        let cmd = command_line(pid);
        ReloadError::NotAServer {
            pid,
            command: if cmd.is_empty() { "?".to_owned() } else { cmd },
            socket: socket_name(pid),
            source,
        }
    })?;
    while before.reloading && !before.stopping {
        if Instant::now() >= deadline {
            return Err(ReloadError::Busy(timeout));
        }
        tokio::time::sleep(poll).await;
        before = query(pid).await.map_err(|e| gone_or(pid, e))?;
    }
    if before.stopping {
        return Err(ReloadError::Stopping(pid));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .map_err(|source| ReloadError::Signal { pid, source })?;
    let ours = before.started + 1;
    loop {
        let now = match query(pid).await {
            Ok(s) => s,
            Err(e) if !alive(pid) => {
                return Err(ReloadError::ExitedDuring { pid, source: e });
            }
            Err(e) => {
                if Instant::now() >= deadline {
                    return Err(ReloadError::Status(e));
                }
                tokio::time::sleep(poll).await;
                continue;
            }
        };
        if now.started >= ours && now.finished >= ours {
            if now.failed > before.failed {
                return Err(ReloadError::Failed(
                    now.last_error
                        .unwrap_or_else(|| "(no reason given)".to_owned()),
                ));
            }
            return Ok(now);
        }
        if now.stopping {
            return Err(ReloadError::StoppingDuring(pid));
        }
        if Instant::now() >= deadline {
            return Err(if now.started < ours {
                ReloadError::NotStarted { pid, timeout }
            } else {
                ReloadError::NotFinished(timeout)
            });
        }
        tokio::time::sleep(poll).await;
    }
}

/// The status could not be read: say so, or that the server is gone.
fn gone_or(pid: u32, e: QueryError) -> ReloadError {
    if alive(pid) {
        ReloadError::Status(e)
    } else {
        ReloadError::Exited(pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_reloads() {
        let r = Reloads::new(1);
        r.started();
        assert!(r.status().reloading);
        r.done(2);
        r.started();
        r.failed("import error");
        let s = r.status();
        assert_eq!(
            (s.generation, s.started, s.finished, s.failed, s.reloading),
            (2, 2, 2, 1, false)
        );
        assert_eq!(s.last_error.as_deref(), Some("import error"));
        r.stopping();
        assert!(r.status().stopping);
    }

    #[tokio::test]
    async fn the_socket_answers_its_own_process() {
        let r = Reloads::new(7);
        tokio::spawn(serve(bind().unwrap(), r.clone()));
        let s = query(std::process::id()).await.unwrap();
        assert_eq!((s.pid, s.generation), (std::process::id(), 7));
        // No such socket: an error, not a hang.
        assert!(query(u32::MAX - 1).await.is_err());
        let e = reload(u32::MAX - 1, Duration::from_secs(1))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("there is no process"), "{e}");
    }
}
