//! The dashboard as the browser tests drive it: `oxbus dashboard` started over a test
//! server (its address read from its first line), users added with the CLI, and a headless
//! Debian chromium through chromedriver (WebDriver, fantoccini) with the checks every page
//! gets: axe-core's serious and critical violations, and a screenshot in
//! target/dashboard-screenshots/.

use crate::{Server, eventually, oxbus_bin};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const AXE: &str = include_str!("../tests/vendor/axe.min.js");

/// A running `oxbus dashboard` over `srv`, with its users.
pub struct Dashboard {
    child: Child,
    pub url: String,
    pub config: PathBuf,
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_dashboard(srv: &Server, dir: &Path, extra: &str) -> Dashboard {
    std::fs::create_dir_all(dir).unwrap();
    let config = dir.join("dashboard.toml");
    std::fs::write(
        &config,
        format!(
            "[dashboard]\nlisten = \"127.0.0.1:0\"\nservers = [\"http://127.0.0.1:{}\"]\n{extra}",
            srv.admin_port()
        ),
    )
    .unwrap();
    let mut child = Command::new(oxbus_bin())
        .args(["dashboard", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("oxbus dashboard at ")
        .unwrap_or_else(|| panic!("the dashboard's first line: {line:?}"))
        .to_owned();
    Dashboard { child, url, config }
}

/// `oxbus dashboard user add NAME --role ROLE` with `password` on standard input.
pub fn add_user(srv: &Server, d: &Dashboard, name: &str, role: &str, password: &str) {
    let mut c = Command::new(oxbus_bin())
        .args([
            "dashboard",
            "user",
            "add",
            name,
            "--role",
            role,
            "--password-stdin",
        ])
        .arg("--config")
        .arg(&d.config)
        .args([
            "--server",
            &format!("http://127.0.0.1:{}", srv.admin_port()),
        ])
        .args(["--token", &srv.admin_token()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(c.stdin.take().unwrap(), "{password}").unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "user add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// chromedriver on a free port, and a headless chromium session through it.
pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: PathBuf,
}

pub async fn browser(dir: &Path) -> Browser {
    let port = crate::proxy::free_port();
    let driver = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver (Debian's chromium-driver; .ci/run installs it)");
    let profile = dir.join(format!("chromium-{port}"));
    std::fs::create_dir_all(&profile).unwrap();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,900",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let client = eventually(Duration::from_secs(30), "chromedriver answers", || {
        let caps = caps.clone();
        async move {
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(caps)
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
                .ok()
        }
    })
    .await;
    Browser {
        client,
        driver,
        _profile: profile,
    }
}

impl Browser {
    pub async fn close(mut self) {
        let _ = self.client.close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    /// The text of the first element `css` finds, waiting up to 10 s for one (an element
    /// of a page being replaced by the next is looked for again).
    pub async fn text(&self, css: &str) -> String {
        eventually(
            Duration::from_secs(10),
            &format!("an element {css}"),
            || async {
                let e = self.client.find(Locator::Css(css)).await.ok()?;
                e.text().await.ok()
            },
        )
        .await
    }

    pub async fn body(&self) -> String {
        self.text("body").await
    }

    pub async fn exists(&self, css: &str) -> bool {
        !self
            .client
            .find_all(Locator::Css(css))
            .await
            .unwrap()
            .is_empty()
    }

    pub async fn fill(&self, css: &str, value: &str) {
        let e = self.client.find(Locator::Css(css)).await.unwrap();
        e.clear().await.unwrap();
        e.send_keys(value).await.unwrap();
    }

    /// Clicks the first element `css` finds. A form's submit button navigates, and WebDriver's
    /// click may return before the next page is there (seen with Chromium 156): then this
    /// waits (up to 10 s) until the page the click left is gone and the new one has loaded,
    /// so that what the test reads next is the answer to the click — unless the form's
    /// script took the submit in place (prevented it), which is no navigation.
    pub async fn click(&self, css: &str) {
        let e = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"));
        // Mark the page the click leaves; a new document has no mark.
        let submits = self
            .client
            .execute(
                "const e = document.querySelector(arguments[0]);
                 const submits = !!(e && e.form && (e.type === 'submit' || e.type === 'image'));
                 if (submits) {
                   window.__oxbusLeaving = true;
                   // Seen after the form's own handlers: a script that answers in place
                   // (the invoke form) prevents the navigation.
                   window.addEventListener('submit', ev => {
                     window.__oxbusInPlace = ev.defaultPrevented;
                   }, {once: true});
                 }
                 return submits;",
                vec![json!(css)],
            )
            .await
            .unwrap()
            .as_bool()
            .unwrap_or(false);
        e.click().await.unwrap();
        if !submits {
            return;
        }
        let end = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            // While the old page is being replaced a script may fail: look again.
            let state = self
                .client
                .execute(
                    "if (window.__oxbusLeaving !== true) {
                       return document.readyState === 'complete' ? 'arrived' : 'loading';
                     }
                     return window.__oxbusInPlace === true ? 'in-place' : 'leaving';",
                    vec![],
                )
                .await
                .ok();
            match state.as_ref().and_then(|v| v.as_str()) {
                Some("arrived") => return,
                Some("in-place") => {
                    let _ = self
                        .client
                        .execute(
                            "delete window.__oxbusLeaving; delete window.__oxbusInPlace;",
                            vec![],
                        )
                        .await;
                    return;
                }
                _ => {}
            }
            assert!(
                std::time::Instant::now() < end,
                "clicking {css} did not lead to a new page within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn path(&self) -> String {
        self.client.current_url().await.unwrap().path().to_owned()
    }

    /// Waits (up to 10 s) until the browser is at `want`: a click that submits a form
    /// returns before the navigation it starts has finished.
    pub async fn wait_path(&self, want: &str) {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let now = self.path().await;
            if now == want {
                return;
            }
            assert!(
                std::time::Instant::now() < end,
                "still at {now}, not {want}, after 10 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }

    pub async fn sign_in(&self, base: &str, user: &str, password: &str) {
        self.goto(&format!("{base}/signin")).await;
        self.fill("#user", user).await;
        self.fill("#password", password).await;
        self.click("button[type=submit]").await;
        // The click returns before the form's navigation has finished: until it has, the
        // body may still be the sign-in page's.
        let signed_in = format!("{user} ·");
        let end = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let b = self.body().await;
            if b.contains(&signed_in) {
                return;
            }
            assert!(
                std::time::Instant::now() < end,
                "signed in as {user} (after 10 s): {b}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The page's serious or critical accessibility violations (axe-core).
    pub async fn axe(&self) -> Vec<String> {
        self.client.execute(AXE, vec![]).await.unwrap();
        let v = self
            .client
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 axe.run(document, {resultTypes: ['violations']}).then(r => done(
                   r.violations.filter(v => v.impact === 'serious' || v.impact === 'critical')
                     .map(v => v.id + ': ' + v.help + ' at ' +
                          v.nodes.map(n => n.target.join(' ')).join(', '))));",
                vec![],
            )
            .await
            .unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap_or("").to_owned())
            .collect()
    }

    /// Checks the page with axe and saves its screenshot as `name`.png.
    pub async fn check_page(&self, name: &str) {
        let v = self.axe().await;
        assert!(v.is_empty(), "accessibility violations on {name}: {v:#?}");
        let png = self.client.screenshot().await.unwrap();
        let dir = crate::repo_root().join("target/dashboard-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    /// A POST from the page's own script context (as a hand-made request from a signed-in
    /// browser would be): its status.
    pub async fn post_from_page(&self, path: &str, body: &str, with_csrf: bool) -> u16 {
        let v = self
            .client
            .execute_async(
                "const [path, body, withCsrf, done] = arguments;
                 const h = {'Content-Type': 'application/x-www-form-urlencoded'};
                 if (withCsrf) {
                   h['X-CSRF-Token'] = JSON.parse(document.body.getAttribute('hx-headers'))['X-CSRF-Token'];
                 }
                 fetch(path, {method: 'POST', headers: h, body: body, redirect: 'manual'})
                   .then(r => done(r.status)).catch(e => done(-1));",
                vec![json!(path), json!(body), json!(with_csrf)],
            )
            .await
            .unwrap();
        v.as_u64().unwrap() as u16
    }
}
