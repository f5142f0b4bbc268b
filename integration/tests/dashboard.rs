//! The dashboard in a real browser (Debian's chromium, driven over WebDriver by
//! chromedriver): sign-in and out, what each role sees and may do (a viewer has no deploy
//! form, and posting it by hand is refused), deploy, invoke, a channel made and called, a
//! cache entry edited, a job run, a rollback, a request without its CSRF token refused,
//! session expiry; axe-core (vendored) checks every page for serious accessibility
//! problems, and every page is screenshotted into target/dashboard-screenshots/.

use fantoccini::Locator;
use oxbus_integration::api::admin;
use oxbus_integration::dashboard::{add_user, browser, start_dashboard};
use oxbus_integration::{Env, eventually, oxbus_bin};
use serde_json::{Value, json};
use std::process::Command;
use std::time::Duration;

const V1: &str = "from oxbus import Service\n\nclass Hello(Service):\n    name = 'dash.hello'\n\n    def handle(self):\n        self.response.payload = {'version': 1, 'got': self.request.payload}\n";
const V2: &str = "from oxbus import Service\n\nclass Hello(Service):\n    name = 'dash.hello'\n\n    def handle(self):\n        self.response.payload = {'version': 2, 'got': self.request.payload}\n";

#[tokio::test]
async fn the_dashboard_in_a_browser_roles_deploy_invoke_channels_caches_jobs_rollback() {
    let srv = Env::new().with_test_services().workers(1).start().await;
    let put = admin(
        &srv,
        "PUT",
        "/v1/jobs/dash-job",
        json!({"service": "test.echo", "type": "interval_based", "hours": 1, "extra": {"from": "job"}}),
    )
    .await;
    assert_eq!(put.status, 201, "{:?}", put.body);
    let work = srv.dir.join("dash");
    let d = start_dashboard(&srv, &work.join("main"), "");
    add_user(&srv, &d, "alice", "admin", "alice-password-1");
    add_user(&srv, &d, "carol", "viewer", "carol-password-1");
    let b = browser(&work).await;
    let base = d.url.clone();

    // Not signed in: every page sends to the sign-in form.
    b.goto(&format!("{base}/services")).await;
    assert_eq!(b.path().await, "/signin");
    b.check_page("signin").await;
    // A wrong password: refused, said so.
    b.fill("#user", "alice").await;
    b.fill("#password", "not-her-password").await;
    b.click("button[type=submit]").await;
    let e = b.text("#signin-error").await;
    assert!(e.contains("Wrong user name or password"), "{e}");

    // The viewer: reads, but no deploy form, and the hand-made POST is refused.
    b.sign_in(&base, "carol", "carol-password-1").await;
    b.check_page("overview").await;
    // The servers' table is live (server-sent events): calls made now show without a reload.
    let before = b.text("#servers-live td.served").await;
    for _ in 0..3 {
        let r = admin(&srv, "POST", "/v1/invoke/test.echo", json!({})).await;
        assert_eq!(r.status, 200);
    }
    let url = b.client.current_url().await.unwrap();
    eventually(
        Duration::from_secs(15),
        "the live table updates",
        || async {
            let now = b.text("#servers-live td.served").await;
            (now != before).then_some(())
        },
    )
    .await;
    assert_eq!(b.client.current_url().await.unwrap(), url, "no navigation");
    b.goto(&format!("{base}/deploy")).await;
    assert!(
        !b.exists("#deploy-submit").await,
        "a viewer has no deploy form"
    );
    assert!(b.body().await.contains("needs the deployer role"));
    let st = b.post_from_page("/jobs/dash-job/execute", "", true).await;
    assert_eq!(st, 403, "a viewer's hand-made run-now is refused");
    b.goto(&format!("{base}/services")).await;
    assert!(!b.exists("a[href='/deploy'].button").await);
    assert!(
        !b.exists("nav a[href='/tokens']").await,
        "a viewer has no API tokens page"
    );
    b.click("form[action='/signout'] button").await;
    b.wait_path("/signin").await;
    // Signed out: the session is gone.
    b.goto(&format!("{base}/services")).await;
    assert_eq!(b.path().await, "/signin");

    // The admin: deploy a module through the form's file input.
    b.sign_in(&base, "alice", "alice-password-1").await;
    let v1 = work.join("dash_hello.py");
    std::fs::write(&v1, V1).unwrap();
    b.goto(&format!("{base}/deploy")).await;
    b.check_page("deploy").await;
    b.client
        .find(Locator::Css("#modules"))
        .await
        .unwrap()
        .send_keys(v1.to_str().unwrap())
        .await
        .unwrap();
    b.click("#deploy-submit").await;
    let result = b.text("#deploy-result").await;
    assert!(result.contains("Deployed dash_hello"), "{result}");
    let modules = b.text("#deploy-modules").await;
    assert!(
        modules.contains("dash_hello version 1: dash.hello"),
        "each module with its services: {modules}"
    );
    let per_server = b.text("#deploy-servers").await;
    assert!(
        per_server.contains("1 / 1"),
        "every worker acknowledged: {per_server}"
    );
    // Seen in the services page, searched for.
    b.goto(&format!("{base}/services?q=dash")).await;
    assert!(b.text("#services-rows").await.contains("dash.hello"));
    b.check_page("services").await;
    // Invoked from its page's form (htmx answers in place).
    b.goto(&format!("{base}/services/dash.hello")).await;
    b.fill("#payload", r#"{"n": 7}"#).await;
    b.click("#invoke button[type=submit]").await;
    let answer = b.text("#invoke-answer").await;
    assert!(
        answer.contains("\"version\": 1") && answer.contains("\"n\": 7"),
        "{answer}"
    );
    b.check_page("service").await;

    // Version 2 (through the API), then rolled back from the page.
    let r = admin(
        &srv,
        "POST",
        "/v1/modules",
        json!({"modules": [{"name": "dash_hello", "source": V2}]}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    b.goto(&format!("{base}/services/dash.hello")).await;
    assert!(b.body().await.contains("diff with 1"));
    b.click("a[href^='/modules/dash_hello/diff']").await;
    let diff = b.text("pre").await;
    assert!(
        diff.contains("- ") && diff.contains("'version': 2"),
        "{diff}"
    );
    b.check_page("diff").await;
    b.goto(&format!("{base}/services/dash.hello")).await;
    b.click("form[action='/modules/dash_hello/rollback'] button")
        .await;
    assert!(
        b.text(".flash.ok")
            .await
            .contains("rolled back to version 1")
    );
    let r = admin(&srv, "POST", "/v1/invoke/dash.hello", json!({})).await;
    assert_eq!(r.json()["version"], 1, "{:?}", r.body);

    // A channel: the server's refusal shown next to the field, then made and called.
    b.goto(&format!("{base}/channels/new")).await;
    b.check_page("channel-new").await;
    b.fill("#f-url_path", "/dash/hello").await;
    b.click("form.stack button[type=submit]").await;
    let err = b.text("#form-error").await;
    assert!(err.contains("refused"), "{err}");
    b.fill("#f-url_path", "/dash/hello").await;
    b.fill("#f-service", "dash.hello").await;
    b.fill("#f-methods", "POST").await;
    b.click("form.stack button[type=submit]").await;
    assert!(b.text(".flash.ok").await.contains("created"));
    b.check_page("channels").await;
    let called = eventually(
        Duration::from_secs(10),
        "the new channel answers",
        || async {
            let r = srv
                .post_json("/dash/hello", &json!({"via": "channel"}))
                .await;
            (r.status == 200).then_some(r)
        },
    )
    .await;
    assert_eq!(called.json()["got"], json!({"via": "channel"}));
    // Edited: GET added to its methods.
    b.goto(&format!("{base}/channels/%2Fdash%2Fhello/edit"))
        .await;
    b.fill("#f-methods", "POST, GET").await;
    b.click("form.stack button[type=submit]").await;
    assert!(b.text(".flash.ok").await.contains("saved"));
    let r = admin(&srv, "GET", "/v1/channels/%2Fdash%2Fhello", Value::Null).await;
    assert_eq!(r.json()["methods"], json!(["POST", "GET"]), "{:?}", r.body);

    // A cache entry added, then edited.
    b.goto(&format!("{base}/caches/default")).await;
    b.fill("#key", "dash:1").await;
    b.fill("#value", r#"{"a": 1}"#).await;
    b.click("form[action='/caches/default/entry'] button").await;
    assert!(b.text(".flash.ok").await.contains("Saved dash:1"));
    b.fill("#value", r#"{"a": 2}"#).await;
    b.click("form[action='/caches/default/entry'] button").await;
    // The click returns before the form's request has been answered (the page still shows
    // the first save's flash): wait for the edit to reach the cache.
    eventually(
        Duration::from_secs(10),
        "the edited cache entry",
        || async {
            let r = admin(&srv, "GET", "/v1/caches/default/keys/dash%3A1", Value::Null).await;
            (r.json()["value"] == json!({"a": 2})).then_some(())
        },
    )
    .await;
    b.check_page("cache-entry").await;
    b.goto(&format!("{base}/caches")).await;
    b.check_page("caches").await;

    // A job run now, and its run listed.
    b.goto(&format!("{base}/jobs")).await;
    b.check_page("jobs").await;
    b.click("form[action='/jobs/dash-job/execute'] button")
        .await;
    assert!(b.text(".flash.ok").await.contains("Ran dash-job: ok"));
    b.goto(&format!("{base}/jobs/dash-job")).await;
    assert!(b.text("#runs").await.contains("manual"));
    b.check_page("job").await;

    // Security definitions, secrets and API tokens; secret material is never shown.
    b.goto(&format!("{base}/security/new?type=apikey")).await;
    b.fill("#f-name", "dash-key").await;
    b.fill("#f-key", "key-dash-123").await;
    b.click("form[action='/security'] button[type=submit]")
        .await;
    assert!(b.text(".flash.ok").await.contains("dash-key"));
    assert!(!b.body().await.contains("key-dash-123"));
    b.check_page("security").await;
    b.goto(&format!("{base}/secrets")).await;
    b.fill("#f-name", "dash.secret").await;
    b.fill("#f-value", "s3cret-dash").await;
    b.click("form[action='/secrets'] button[type=submit]").await;
    assert!(b.text(".flash.ok").await.contains("dash.secret"));
    assert!(!b.body().await.contains("s3cret-dash"));
    b.check_page("secrets").await;
    b.goto(&format!("{base}/tokens")).await;
    b.fill("#f-name", "dash-ci").await;
    b.click("form[action='/tokens'] button[type=submit]").await;
    let token = b
        .client
        .find(Locator::Css("#new-token"))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap()
        .unwrap_or_default();
    assert!(token.starts_with("oxbus_"), "{token}");
    let r = srv.admin("GET", "/v1/info", Some(&token), b"").await;
    assert_eq!(r.status, 200, "the new token works");
    b.check_page("tokens").await;

    // Connections: a REST connection to the server itself, pinged from the page.
    let r = admin(
        &srv,
        "PUT",
        "/v1/outgoing/rest/dash-self",
        json!({"address": format!("http://127.0.0.1:{}", srv.port())}),
    )
    .await;
    assert!(r.status == 200 || r.status == 201, "{:?}", r.body);
    b.goto(&format!("{base}/outgoing")).await;
    assert!(b.body().await.contains("dash-self"));
    b.check_page("outgoing").await;
    b.click("form[action='/outgoing/rest/dash-self/ping'] button")
        .await;
    let ping = b.text(".flash").await;
    assert!(ping.contains("dash-self"), "{ping}");

    // Pub/sub: a pull subscription's queued message browsed, then purged.
    let r = admin(&srv, "PUT", "/v1/pubsub/topics/dash/t", json!({})).await;
    assert!(r.status == 200 || r.status == 201, "{:?}", r.body);
    let r = admin(
        &srv,
        "PUT",
        "/v1/pubsub/subs/dash.sub",
        json!({"topic": "/dash/t", "delivery": {"type": "pull"}}),
    )
    .await;
    assert!(r.status == 200 || r.status == 201, "{:?}", r.body);
    let r = admin(
        &srv,
        "POST",
        "/v1/pubsub/publish/dash/t",
        json!({"data": "hello dashboard"}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    b.goto(&format!("{base}/pubsub")).await;
    assert!(b.body().await.contains("dash.sub"));
    b.check_page("pubsub").await;
    b.goto(&format!("{base}/pubsub/subs/dash.sub")).await;
    eventually(
        Duration::from_secs(10),
        "the queued message shown",
        || async {
            b.goto(&format!("{base}/pubsub/subs/dash.sub")).await;
            b.body().await.contains("hello dashboard").then_some(())
        },
    )
    .await;
    b.check_page("pubsub-sub").await;
    b.click("form[action$='/purge'] button").await;
    assert!(b.text(".flash.ok").await.to_lowercase().contains("purged"));

    // Every change above is in the audit log under the dashboard user's identity.
    b.goto(&format!("{base}/audit?who=dashboard.alice")).await;
    let audit = b.text("#audit").await;
    assert!(
        audit.contains("dashboard.alice") && audit.contains("rollback"),
        "{audit}"
    );
    b.check_page("audit").await;
    b.goto(&format!("{base}/servers")).await;
    b.check_page("servers").await;

    // A rolling restart of the workers from the servers' page.
    let pids = srv.worker_pids();
    b.click("form[action='/servers/restart'] button").await;
    assert!(b.text(".flash.ok").await.contains("Rolling restart"));
    eventually(Duration::from_secs(30), "the workers replaced", || async {
        let now = srv.worker_pids();
        (!now.is_empty() && now.iter().all(|p| !pids.contains(p))).then_some(())
    })
    .await;

    // Config: the export downloads as JSON; an import shows its plan, then applies it.
    let export = b
        .client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch('/config/export?format=json').then(r => r.json()).then(done);",
            vec![],
        )
        .await
        .unwrap();
    assert!(export["channel_rest"].is_array(), "{export}");
    let import = work.join("import.yaml");
    std::fs::write(
        &import,
        "channel_rest:\n  - name: /dash/imported\n    url_path: /dash/imported\n    service: dash.hello\n    methods: [POST]\n",
    )
    .unwrap();
    b.goto(&format!("{base}/config")).await;
    b.check_page("config").await;
    b.client
        .find(Locator::Css("#document"))
        .await
        .unwrap()
        .send_keys(import.to_str().unwrap())
        .await
        .unwrap();
    b.click("#plan-submit").await;
    // The plan's page is there once its apply button is (the click returns before the
    // navigation ends).
    b.text("#apply-submit").await;
    let plan = b.body().await;
    assert!(
        plan.contains("create channel_rest /dash/imported"),
        "{plan}"
    );
    assert!(
        plan.contains("+ "),
        "the new object shown as added lines: {plan}"
    );
    b.check_page("config-plan").await;
    let r = admin(&srv, "GET", "/v1/channels/%2Fdash%2Fimported", Value::Null).await;
    assert_eq!(r.status, 404, "nothing applied before the button");
    b.click("#apply-submit").await;
    assert!(b.text(".flash.ok").await.contains("Imported: 1 changes"));
    let r = admin(&srv, "GET", "/v1/channels/%2Fdash%2Fimported", Value::Null).await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    // Without the CSRF token, a signed-in browser's POST is refused.
    assert_eq!(
        b.post_from_page("/jobs/dash-job/execute", "", false).await,
        403
    );
    assert_eq!(
        b.post_from_page("/jobs/dash-job/execute", "csrf=wrong", false)
            .await,
        403
    );
    // A removed user (its token revoked on the servers) is signed out at its next page.
    b.click("form[action='/signout'] button").await;
    b.wait_path("/signin").await;
    b.sign_in(&base, "carol", "carol-password-1").await;
    let out = Command::new(oxbus_bin())
        .args(["dashboard", "user", "remove", "carol", "--config"])
        .arg(&d.config)
        .args([
            "--server",
            &format!("http://127.0.0.1:{}", srv.admin_port()),
        ])
        .args(["--token", &srv.admin_token()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    b.goto(&format!("{base}/services")).await;
    eventually(
        Duration::from_secs(10),
        "the removed user signed out",
        || async { (b.path().await == "/signin").then_some(()) },
    )
    .await;
    b.fill("#user", "carol").await;
    b.fill("#password", "carol-password-1").await;
    b.click("button[type=submit]").await;
    let e = b.text("#signin-error").await;
    assert!(e.contains("Wrong user name or password"), "{e}");
    b.close().await;

    // Sessions end: a dashboard whose sessions last two seconds however busy (the idle
    // limit is the same check, unit-tested in the dashboard's session.rs).
    let short = start_dashboard(&srv, &work.join("short"), "session_max_s = 2\n");
    add_user(&srv, &short, "dave", "viewer", "dave-password-12");
    let b = browser(&work).await;
    b.sign_in(&short.url, "dave", "dave-password-12").await;
    eventually(Duration::from_secs(20), "the session ends", || async {
        b.goto(&format!("{}/services", short.url)).await;
        (b.path().await == "/signin").then_some(())
    })
    .await;
    b.close().await;
}

#[tokio::test]
async fn over_https_the_dashboards_cookies_are_secure_host_cookies() {
    let srv = Env::new().with_test_services().workers(1).start().await;
    let work = srv.dir.join("dash-tls");
    let certs = oxbus_integration::upstream::make_certs(&work.join("certs"));
    let d = start_dashboard(
        &srv,
        &work,
        &format!(
            "tls_cert_file = {:?}\ntls_key_file = {:?}\n",
            certs.cert.to_str().unwrap(),
            certs.key.to_str().unwrap()
        ),
    );
    assert!(d.url.starts_with("https://"), "{}", d.url);
    let port: u16 = d.url.rsplit(':').next().unwrap().parse().unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(&certs.ca).unwrap(),
    )) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("a TLS handshake with the dashboard's certificate");
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = send
        .send_request(
            hyper::Request::get("/signin")
                .header("host", "localhost")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.starts_with("__Host-oxdash_pre="), "{cookie}");
    assert!(cookie.contains("; Secure"), "{cookie}");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(
        resp.headers()["strict-transport-security"]
            .to_str()
            .unwrap()
            .starts_with("max-age="),
    );
    // Plain HTTP on the same port gets no page.
    let plain = oxbus_integration::Client::connect(port).await;
    if let Ok(mut c) = plain {
        let r = c.request("GET", "/signin", &[], bytes::Bytes::new()).await;
        assert!(r.is_err() || r.unwrap().status != 200);
    }
}
