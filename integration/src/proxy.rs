//! Harness for `oxbus proxy`: a proxy process with its own temp dir and captured log, and a
//! continuous-load generator that counts every request's fate.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

use crate::oxbus_bin;

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (30 s at most) for the old process an upgrade handed over from to exit, and
/// checks that it exited cleanly; `what` names the wait in the failure.
pub async fn old_exits_cleanly(old: &mut Child, what: &str) {
    let end = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = old.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < end, "old proxy did not exit ({what})");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "old proxy exit: {status:?}");
}

/// One `oxbus proxy` process.
pub struct Proxy {
    child: Option<Child>,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub port: u16,
    pub stats_port: u16,
    log: Arc<Mutex<String>>,
}

impl Proxy {
    /// Writes `proxy.toml` (a `[proxy]` section with listen, stats_listen and state_dir
    /// filled in, then `rest` verbatim) and starts the proxy, waiting until it serves.
    pub fn start(proxy_keys: &str, rest: &str) -> Proxy {
        let dir = std::env::temp_dir().join(format!(
            "oxbus-proxy-it-{}-{}",
            std::process::id(),
            crate::next_id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let stats_port = free_port();
        let config = dir.join("proxy.toml");
        std::fs::write(
            &config,
            format!(
                "[proxy]\nlisten = \"127.0.0.1:{port}\"\nstats_listen = \"127.0.0.1:{stats_port}\"\nstate_dir = \"{}\"\n{proxy_keys}\n{rest}\n",
                dir.join("state").display()
            ),
        )
        .unwrap();
        let mut p = Proxy {
            child: None,
            dir,
            config,
            port,
            stats_port,
            log: Arc::new(Mutex::new(String::new())),
        };
        p.child = Some(p.spawn(false));
        p.wait_serving(1);
        p
    }

    /// A proxy (`proxy_keys` in its `[proxy]` section) in front of the servers on `ports`
    /// (checked every 100 ms), once it sees every one of them up.
    pub async fn in_front_of(proxy_keys: &str, ports: &[u16]) -> Proxy {
        let list: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
        let p = Proxy::start(
            proxy_keys,
            &format!(
                "[upstreams]\nservers = [{}]\n[health]\ninterval_ms = 100\ntimeout_ms = 500\n",
                list.join(", ")
            ),
        );
        for port in ports {
            crate::eventually(
                Duration::from_secs(20),
                "the proxy sees the server up",
                || async { (p.upstream(*port).await["up"] == true).then_some(()) },
            )
            .await;
        }
        p
    }

    /// Starts `oxbus proxy` on this config; its output goes to this proxy's log.
    pub fn spawn(&self, upgrade: bool) -> Child {
        let mut cmd = Command::new(oxbus_bin());
        cmd.arg("proxy").arg("--config").arg(&self.config);
        if upgrade {
            cmd.arg("--upgrade");
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn oxbus proxy");
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let log = self.log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        child
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log holds `n` "proxy serving" lines (one per process generation).
    pub fn wait_serving(&self, n: usize) {
        let end = Instant::now() + Duration::from_secs(30);
        while self.log().matches("proxy serving").count() < n {
            assert!(
                Instant::now() < end,
                "proxy did not start; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Hands over to a new process (`--upgrade`); returns the old one, still finishing.
    pub fn upgrade(&mut self) -> Child {
        let generations = self.log().matches("proxy serving").count();
        let new = self.spawn(true);
        let old = self.child.replace(new).expect("a running proxy");
        self.wait_serving(generations + 1);
        old
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// GET /stats of the proxy, as JSON.
    pub async fn stats(&self) -> serde_json::Value {
        let r = get(self.stats_port, "/stats")
            .await
            .expect("stats endpoint");
        assert_eq!(r.0, 200);
        serde_json::from_slice(&r.1).expect("stats JSON")
    }

    /// The stats entry of the upstream on `port` (Null if the proxy never saw it).
    pub async fn upstream(&self, port: u16) -> serde_json::Value {
        let want = format!("127.0.0.1:{port}");
        let s = self.stats().await;
        s["upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["address"] == want.as_str())
            .cloned()
            .unwrap_or(serde_json::Value::Null)
    }

    /// Lines at ERROR level that contain none of `allowed`.
    pub fn unexpected_errors(&self, allowed: &[&str]) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(" ERROR "))
            .filter(|l| !allowed.iter().any(|a| l.contains(a)))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- proxy log ----\n{}", self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One request on a fresh connection: (status, body).
pub async fn get(port: u16, path: &str) -> anyhow::Result<(u16, Bytes)> {
    let mut c = Conn::connect(port, None).await?;
    let r = c
        .send("GET", path, &[], Bytes::new())
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok((r.0, r.1))
}

/// A keep-alive client connection that tells "the server closed before I sent" (not a
/// failed request: nothing was sent) from "the request failed".
pub struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    port: u16,
}

#[derive(Debug)]
pub enum SendError {
    /// The connection was closed before the request was written.
    Closed,
    /// The request was (at least partly) sent and got no response.
    Failed(String),
}

impl Conn {
    /// Connects to 127.0.0.1:`port`, from `source` (an address on 127/8) if given.
    pub async fn connect(port: u16, source: Option<std::net::IpAddr>) -> anyhow::Result<Conn> {
        let stream = match source {
            Some(ip) => {
                let s = tokio::net::TcpSocket::new_v4()?;
                s.bind(std::net::SocketAddr::new(ip, 0))?;
                s.connect(([127, 0, 0, 1], port).into()).await?
            }
            None => TcpStream::connect(("127.0.0.1", port)).await?,
        };
        stream.set_nodelay(true)?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn { sender, port })
    }

    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<(u16, Bytes, hyper::HeaderMap), SendError> {
        if self.sender.ready().await.is_err() {
            return Err(SendError::Closed);
        }
        let mut b = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", format!("127.0.0.1:{}", self.port));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(body)).expect("request");
        match self.sender.send_request(req).await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let headers = resp.headers().clone();
                match resp.into_body().collect().await {
                    Ok(b) => Ok((status, b.to_bytes(), headers)),
                    Err(e) => Err(SendError::Failed(format!("body: {e}"))),
                }
            }
            Err(e) if e.is_canceled() => Err(SendError::Closed),
            Err(e) => Err(SendError::Failed(e.to_string())),
        }
    }
}

/// What continuous load saw.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub statuses: BTreeMap<u16, u64>,
    /// Requests sent that got no answer.
    pub failed: Vec<String>,
    /// Connection attempts refused (or otherwise failing to connect).
    pub refused: Vec<String>,
    /// Answers by the `pid` field of their JSON body, when there is one.
    pub by_pid: BTreeMap<u64, u64>,
    /// When each request that did not get a 200 was started.
    pub failed_started: Vec<Instant>,
}

impl Tally {
    pub fn ok(&self) -> u64 {
        self.statuses.get(&200).copied().unwrap_or(0)
    }

    pub fn not_ok(&self) -> u64 {
        self.statuses
            .iter()
            .filter(|(s, _)| **s != 200)
            .map(|(_, n)| n)
            .sum::<u64>()
            + self.failed.len() as u64
            + self.refused.len() as u64
    }

    fn merge(&mut self, o: &Tally) {
        for (k, v) in &o.statuses {
            *self.statuses.entry(*k).or_default() += v;
        }
        for (k, v) in &o.by_pid {
            *self.by_pid.entry(*k).or_default() += v;
        }
        self.failed.extend(o.failed.iter().cloned());
        self.refused.extend(o.refused.iter().cloned());
        self.failed_started.extend(o.failed_started.iter().copied());
    }
}

/// `conns` keep-alive clients sending `method path` back to back until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    tallies: Vec<Arc<Mutex<Tally>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(port: u16, conns: usize, method: &'static str, path: &'static str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tallies = Vec::new();
        let mut tasks = Vec::new();
        for _ in 0..conns {
            let tally = Arc::new(Mutex::new(Tally::default()));
            tallies.push(tally.clone());
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let mut conn: Option<Conn> = None;
                let body = if method == "POST" {
                    Bytes::from_static(b"{\"hello\": \"proxy\"}")
                } else {
                    Bytes::new()
                };
                while !stop.load(Ordering::Relaxed) {
                    let c = match conn.as_mut() {
                        Some(c) => c,
                        None => match Conn::connect(port, None).await {
                            Ok(c) => conn.insert(c),
                            Err(e) => {
                                tally.lock().unwrap().refused.push(e.to_string());
                                tokio::time::sleep(Duration::from_millis(5)).await;
                                continue;
                            }
                        },
                    };
                    let headers = [("content-type", "application/json")];
                    let started = Instant::now();
                    match c.send(method, path, &headers, body.clone()).await {
                        Ok((status, body, _)) => {
                            let mut t = tally.lock().unwrap();
                            *t.statuses.entry(status).or_default() += 1;
                            if status != 200 {
                                t.failed_started.push(started);
                            }
                            if let Some(pid) = serde_json::from_slice::<serde_json::Value>(&body)
                                .ok()
                                .and_then(|v| v["pid"].as_u64())
                            {
                                *t.by_pid.entry(pid).or_default() += 1;
                            }
                        }
                        Err(SendError::Closed) => conn = None,
                        Err(SendError::Failed(e)) => {
                            let mut t = tally.lock().unwrap();
                            t.failed.push(e);
                            t.failed_started.push(started);
                            conn = None;
                        }
                    }
                }
            }));
        }
        Load {
            stop,
            tallies,
            tasks,
        }
    }

    /// Waits (up to 30 s) until `more` further requests than now got a 200.
    pub async fn more_ok(&self, more: u64) {
        let want = self.tally().ok() + more;
        crate::eventually(
            Duration::from_secs(30),
            "more answers under load",
            || async { (self.tally().ok() >= want).then_some(()) },
        )
        .await;
    }

    /// What was seen so far.
    pub fn tally(&self) -> Tally {
        let mut all = Tally::default();
        for t in &self.tallies {
            all.merge(&t.lock().unwrap());
        }
        all
    }

    pub async fn stop(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let mut all = Tally::default();
        for t in &self.tallies {
            all.merge(&t.lock().unwrap());
        }
        all
    }
}
