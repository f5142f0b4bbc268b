//! systemd's notify protocol (`sd_notify(3)`), from the server's side: `READY=1` once the
//! listeners are bound, every worker has loaded its services and the config is applied;
//! `STATUS=` one line; `STOPPING=1`; `RELOADING=1` with `MONOTONIC_USEC=` on SIGHUP, then
//! `READY=1`; `WATCHDOG=1` at half of `WATCHDOG_USEC`, only while the supervisor loop makes
//! progress. Without `NOTIFY_SOCKET` every call is a no-op.
//!
//! The variables are read once at start; the workers never see them (`process` removes them
//! from their environment, with `LISTEN_*`).

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// The variables systemd sets for its service that no worker may inherit.
pub const SYSTEMD_VARS: [&str; 6] = [
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "LISTEN_PID",
];

/// The server's notify socket, if systemd gave one.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    /// The watchdog interval, when systemd asks for pings (and for this process).
    watchdog: Option<Duration>,
    /// The last STATUS= sent, so that an unchanged one is not sent again.
    status: Mutex<String>,
    /// Milliseconds since `epoch` of the supervisor loop's last turn.
    progress_ms: AtomicU64,
    epoch: Instant,
}

impl Notifier {
    /// From the environment (`NOTIFY_SOCKET`, `WATCHDOG_USEC`, `WATCHDOG_PID`).
    pub fn from_env() -> Notifier {
        let target = std::env::var("NOTIFY_SOCKET")
            .ok()
            .filter(|s| !s.is_empty())
            .and_then(|path| match open(&path) {
                Ok(t) => Some(t),
                Err(e) => {
                    warn!(socket = %path, error = %e, "NOTIFY_SOCKET is set but unusable: systemd will not hear from this server");
                    None
                }
            });
        let for_me = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_none_or(|p| p == std::process::id());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|u| *u > 0 && for_me && target.is_some())
            .map(Duration::from_micros);
        Notifier {
            target,
            watchdog,
            status: Mutex::new(String::new()),
            progress_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// Whether systemd listens.
    pub fn active(&self) -> bool {
        self.target.is_some()
    }

    fn send(&self, msg: &str) {
        if let Some((sock, addr)) = &self.target
            && let Err(e) = sock.send_to_addr(msg.as_bytes(), addr)
        {
            debug!(error = %e, "sd_notify failed");
        }
    }

    /// `READY=1` with the current status line.
    pub fn ready(&self, status: &str) {
        *self.status.lock().expect("status lock") = status.to_owned();
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    /// `STATUS=…`, when it changed.
    pub fn status(&self, status: &str) {
        let mut last = self.status.lock().expect("status lock");
        if *last != status {
            *last = status.to_owned();
            self.send(&format!("STATUS={status}"));
        }
    }

    /// `STOPPING=1`.
    pub fn stopping(&self, status: &str) {
        *self.status.lock().expect("status lock") = status.to_owned();
        self.send(&format!("STOPPING=1\nSTATUS={status}"));
    }

    /// `RELOADING=1` with the monotonic clock, as systemd requires of a reload.
    pub fn reloading(&self, status: &str) {
        *self.status.lock().expect("status lock") = status.to_owned();
        self.send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS={status}",
            monotonic_usec()
        ));
    }

    /// The supervisor loop took a turn (called from its tick).
    pub fn progress(&self) {
        self.progress_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// The watchdog interval systemd asked for, if any.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Pings the watchdog at half its interval for as long as the process lives, but only
    /// while the supervisor loop has taken a turn within that half interval: a stuck loop
    /// stops the pings and systemd restarts the server.
    pub async fn watch(self: std::sync::Arc<Self>) {
        let Some(interval) = self.watchdog else {
            return;
        };
        let half = interval / 2;
        let mut tick = tokio::time::interval(half);
        let mut silent = false;
        loop {
            tick.tick().await;
            let last = Duration::from_millis(self.progress_ms.load(Ordering::Relaxed));
            let since = self.epoch.elapsed().saturating_sub(last);
            if since <= half {
                self.send("WATCHDOG=1");
                silent = false;
            } else if !silent {
                silent = true;
                warn!(
                    stalled_ms = since.as_millis() as u64,
                    "the supervisor loop is not making progress: watchdog pings stop"
                );
            }
        }
    }
}

fn open(path: &str) -> std::io::Result<(UnixDatagram, SocketAddr)> {
    let addr = match path.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes())?
        }
        None => SocketAddr::from_pathname(path)?,
    };
    Ok((UnixDatagram::unbound()?, addr))
}

/// CLOCK_MONOTONIC in microseconds, as `MONOTONIC_USEC=` wants it.
fn monotonic_usec() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(t) => t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1000,
        Err(_) => 0,
    }
}
