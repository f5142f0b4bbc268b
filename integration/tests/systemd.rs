//! The server under systemd, with the test playing systemd's side: a real `NOTIFY_SOCKET`
//! datagram listener (READY after the workers are up, STATUS, WATCHDOG pings, RELOADING with
//! MONOTONIC_USEC then READY on SIGHUP, STOPPING on SIGTERM), the workers' environment free
//! of systemd's variables, and exit code 78 for a configuration error.

use oxbus_integration::*;
use serde_json::Value;
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ENV_SERVICE: &str = r#"import os

from oxbus import Service


class Env(Service):
    name = 'sd.env'

    def handle(self):
        self.response.payload = sorted(k for k in os.environ
                                       if k.startswith(('NOTIFY_', 'WATCHDOG_', 'LISTEN_')))
"#;

/// systemd's end of the notify socket: every datagram received, in order.
struct Systemd {
    path: std::path::PathBuf,
    got: Arc<Mutex<Vec<(std::time::Instant, String)>>>,
}

impl Systemd {
    fn listen() -> Systemd {
        let dir =
            std::env::temp_dir().join(format!("oxbus-sd-{}-{}", std::process::id(), next_id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        let got: Arc<Mutex<Vec<(std::time::Instant, String)>>> = Arc::default();
        let sink = got.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                sink.lock().unwrap().push((
                    std::time::Instant::now(),
                    String::from_utf8_lossy(&buf[..n]).into_owned(),
                ));
            }
        });
        Systemd { path, got }
    }

    fn messages(&self) -> Vec<String> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// When each WATCHDOG=1 arrived.
    fn pings(&self) -> Vec<std::time::Instant> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, m)| m == "WATCHDOG=1")
            .map(|(t, _)| *t)
            .collect()
    }

    /// Waits for a datagram containing `what` after the first `skip` ones; its index.
    async fn wait_for(&self, what: &str, skip: usize) -> usize {
        eventually(
            Duration::from_secs(30),
            &format!("{what:?} from the server"),
            || {
                let m = self.messages();
                async move {
                    m.iter()
                        .enumerate()
                        .skip(skip)
                        .find(|(_, s)| s.lines().any(|l| l == what))
                        .map(|(i, _)| i)
                }
            },
        )
        .await
    }
}

#[tokio::test]
async fn the_server_speaks_the_notify_protocol() {
    let sd = Systemd::listen();
    let srv = Env::new()
        .workers(2)
        .service("sd.py", ENV_SERVICE)
        .channel("/env", &["GET"], "sd.env")
        .env("NOTIFY_SOCKET", sd.path.to_str().unwrap())
        .env("WATCHDOG_USEC", "1000000")
        // Socket activation meant for another process: ignored (the server binds its own
        // address, where the requests below go), and not passed on.
        .env("LISTEN_PID", "1")
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "http")
        .spawn();
    let ready = sd.wait_for("READY=1", 0).await;
    // READY only once the workers are up: the server answers at once.
    let r = srv.get("/readyz").await;
    assert_eq!(
        r.status, 200,
        "READY=1 was sent before the server was ready"
    );
    let first = &sd.messages()[ready];
    assert!(
        first.contains("STATUS=workers 2/2 ready, config version "),
        "{first}"
    );
    assert!(first.contains(", store ok"), "{first}");
    assert!(
        sd.messages()[..ready]
            .iter()
            .all(|m| !m.contains("READY=1")),
        "more than one READY at start"
    );
    // The watchdog is pinged while the server runs.
    let pings = |sd: &Systemd| sd.messages().iter().filter(|m| *m == "WATCHDOG=1").count();
    eventually(Duration::from_secs(20), "four watchdog pings", || {
        let n = pings(&sd);
        async move { (n >= 4).then_some(()) }
    })
    .await;
    // At half the interval: never as late as the watchdog's deadline (1 s), and not a
    // stream of them either.
    let times = sd.pings();
    for w in times.windows(2) {
        let gap = w[1] - w[0];
        assert!(
            gap < Duration::from_secs(1) && gap > Duration::from_millis(100),
            "pings {gap:?} apart with WATCHDOG_USEC=1000000"
        );
    }
    // The workers do not see systemd's variables.
    let env = srv.get("/env").await;
    assert_eq!(env.status, 200);
    assert_eq!(
        env.json(),
        Value::Array(vec![]),
        "workers inherited systemd's variables"
    );
    // SIGHUP: RELOADING=1 with the monotonic clock, then READY=1 once the new workers serve.
    let before = sd.messages().len();
    srv.signal(nix::sys::signal::Signal::SIGHUP);
    let reloading = sd.wait_for("RELOADING=1", before).await;
    let msg = &sd.messages()[reloading];
    let usec: u64 = msg
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .expect("MONOTONIC_USEC with RELOADING")
        .parse()
        .unwrap();
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    let now_usec = now.tv_sec() as u64 * 1_000_000 + now.tv_nsec() as u64 / 1000;
    assert!(
        usec <= now_usec && usec > now_usec - 60_000_000,
        "{usec} vs {now_usec}"
    );
    sd.wait_for("READY=1", reloading).await;
    // SIGTERM: STOPPING=1.
    let before = sd.messages().len();
    let mut srv = srv;
    srv.signal(nix::sys::signal::Signal::SIGTERM);
    sd.wait_for("STOPPING=1", before).await;
    assert_eq!(srv.wait_exit(Duration::from_secs(60)), Some(0));
}

#[tokio::test]
async fn a_configuration_error_exits_78() {
    let mut srv = Env::new().workers(9).spawn();
    assert_eq!(
        srv.wait_exit(Duration::from_secs(30)),
        Some(78),
        "{}",
        srv.log()
    );
    assert!(srv.log().contains("8"), "{}", srv.log());
}

#[tokio::test]
async fn socket_activation_uses_the_socket_systemd_holds() {
    // systemd-socket-activate holds the listening socket and starts the server on the first
    // connection, passing it as LISTEN_FDS with LISTEN_PID set to the server: that first
    // connection waits in the socket's queue until the server serves it.
    let (dir, config) = Env::new().workers(1).write();
    let port = oxbus_integration::proxy::free_port();
    let log = std::fs::File::create(dir.join("activated.log")).unwrap();
    let mut holder = std::process::Command::new("systemd-socket-activate")
        .args(["-l", &format!("127.0.0.1:{port}"), "--fdname=http"])
        .arg(oxbus_bin())
        .args(["server", "--config"])
        .arg(&config)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("systemd-socket-activate (Debian's systemd package)");
    eventually(
        Duration::from_secs(60),
        "the activated server to be ready",
        || async {
            let mut c = Client::connect(port).await.ok()?;
            let r = c
                .request("GET", "/readyz", &[], bytes::Bytes::new())
                .await
                .ok()?;
            (r.status == 200).then_some(())
        },
    )
    .await;
    let text = std::fs::read_to_string(dir.join("activated.log")).unwrap();
    assert!(
        text.contains("HTTP listener from systemd (socket activation)"),
        "{text}"
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(holder.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = holder.wait();
}

#[tokio::test]
async fn log_lines_carry_their_priority_when_stderr_is_the_journal() {
    use std::os::unix::fs::MetadataExt;
    let (dir, config) = Env::new().workers(1).write();
    let path = dir.join("journal.log");
    let log = std::fs::File::create(&path).unwrap();
    let m = log.metadata().unwrap();
    let mut server = std::process::Command::new(oxbus_bin())
        .args(["server", "--config"])
        .arg(&config)
        // As systemd sets it when standard error is connected to the journal.
        .env("JOURNAL_STREAM", format!("{}:{}", m.dev(), m.ino()))
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let text = eventually(Duration::from_secs(60), "server ready in the log", || {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        async move { text.contains("server ready").then_some(text) }
    })
    .await;
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = server.wait();
    let ready = text.lines().find(|l| l.contains("server ready")).unwrap();
    assert!(ready.starts_with("<6>"), "{ready}");
    assert!(!text.contains('\u{1b}'), "no colours in the journal");
    // Without JOURNAL_STREAM (or naming another file) there is no prefix: the other tests'
    // logs are read as plain text throughout.
}

#[tokio::test]
async fn a_stalled_supervisor_loop_stops_the_watchdog_pings() {
    let sd = Systemd::listen();
    let srv = Env::new()
        .workers(1)
        .env("NOTIFY_SOCKET", sd.path.to_str().unwrap())
        .env("WATCHDOG_USEC", "400000")
        // Fault injection: SIGUSR2 blocks the supervisor loop for 3 s. On a multi-threaded
        // runtime, so that the pinging task still runs and must notice the loop stopped
        // (on one thread everything stops, which stops the pings trivially).
        .env("OXBUS_FAULT_STALL_MS", "3000")
        .set("server", "io_threads", "2")
        .spawn();
    sd.wait_for("READY=1", 0).await;
    eventually(Duration::from_secs(20), "watchdog pings", || {
        let n = sd.pings().len();
        async move { (n >= 3).then_some(()) }
    })
    .await;
    let stalled_at = std::time::Instant::now();
    srv.signal(nix::sys::signal::Signal::SIGUSR2);
    // Pings every 200 ms stop while the loop is stuck (3 s), then resume.
    eventually(Duration::from_secs(30), "pings after the stall", || {
        let p = sd.pings();
        async move {
            p.iter()
                .any(|t| t.duration_since(stalled_at) > Duration::from_secs(3))
                .then_some(())
        }
    })
    .await;
    let pings = sd.pings();
    let longest = pings
        .windows(2)
        .filter(|w| w[1] > stalled_at)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap();
    assert!(
        longest >= Duration::from_millis(1500),
        "the pings went on while the loop was stalled (longest gap {longest:?})"
    );
    assert!(srv.log().contains("watchdog pings stop"), "{}", srv.log());
}

#[tokio::test]
async fn the_secrets_key_comes_from_the_systemd_credential() {
    // LoadCredential=oxbus-secret-key:… puts the key in $CREDENTIALS_DIRECTORY: it is used
    // instead of a key file (none is created).
    let creds =
        std::env::temp_dir().join(format!("oxbus-creds-{}-{}", std::process::id(), next_id()));
    std::fs::create_dir_all(&creds).unwrap();
    let cred = creds.join("oxbus-secret-key");
    std::fs::write(&cred, "ab".repeat(32)).unwrap();
    let srv = Env::new()
        .workers(1)
        .env("CREDENTIALS_DIRECTORY", creds.to_str().unwrap())
        .start()
        .await;
    let line = srv
        .log_lines("secrets key loaded")
        .into_iter()
        .next()
        .expect("the key's log line");
    assert!(line.contains(cred.to_str().unwrap()), "{line}");
    // A secret set now is sealed with that key.
    let r = srv
        .admin(
            "PUT",
            "/v1/secrets/db-password",
            Some(&srv.admin_token()),
            br#"{"value": "s3cret"}"#,
        )
        .await;
    assert!(
        r.status == 200 || r.status == 201,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert!(
        !srv.log().contains("secret.key"),
        "a key file was used or created beside the credential"
    );
}
