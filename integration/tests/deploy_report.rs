//! What a deploy tells its deployer (issue 25): the services each module defines, the
//! check's warnings (a class with no handler, a module with no service), a redeploy of
//! unchanged source (no new version, so a rollback still means the previous different
//! one), and a duplicate service name reported once, naming both classes — through the
//! admin API, `oxbus deploy` and the pickup directory's log.

use oxbus_integration::api::config_version;
use oxbus_integration::*;
use serde_json::{Value, json};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn hello(version: u32) -> String {
    format!(
        r#"from oxbus import Service


class Hello(Service):
    name = 'hot.hello'

    def handle(self):
        self.response.payload = {{'version': {version}}}


class Bye(Service):
    name = 'hot.bye'

    def handle(self):
        self.response.payload = 'bye'
"#
    )
}

/// A class whose verb handler is lower case and one whose `handle` is misspelt: neither is
/// a service.
const SILENT: &str = r#"from oxbus import Service


class Lower(Service):
    def handle_get(self):
        self.response.payload = 'never'


class Typo(Service):
    def handel(self):
        self.response.payload = 'never'
"#;

async fn deploy(srv: &Server, modules: &[(&str, &str)]) -> Resp {
    let list: Vec<Value> = modules
        .iter()
        .map(|(name, source)| json!({"name": name, "source": source}))
        .collect();
    post_modules(srv, &json!({"modules": list, "deployed_by": "it"})).await
}

/// `POST /v1/modules` with `body`, as the admin.
async fn post_modules(srv: &Server, body: &Value) -> Resp {
    srv.admin(
        "POST",
        "/v1/modules",
        Some(&srv.admin_token()),
        body.to_string().as_bytes(),
    )
    .await
}

fn text(r: &Resp) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

#[tokio::test]
async fn the_report_lists_services_warns_and_leaves_unchanged_modules_alone() {
    let srv = Env::new()
        .workers(1)
        .channel("/hot", &["GET"], "hot.hello")
        .start()
        .await;
    let token = srv.admin_token();

    // Each module's services in the report; a module with none gets a warning.
    let r = deploy(&srv, &[("hot", &hello(1)), ("util", "X = 1\n")]).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let rep = r.json();
    let modules = rep["modules"].as_array().unwrap();
    let hot = modules.iter().find(|m| m["name"] == "hot").unwrap();
    assert_eq!(hot["services"], json!(["hot.hello", "hot.bye"]));
    let util = modules.iter().find(|m| m["name"] == "util").unwrap();
    assert_eq!(util["services"], json!([]));
    assert_eq!(
        rep["warnings"],
        json!([{"module": "util", "message": "module util defines no services (no class \
                deriving from oxbus.Service with a handle method)"}])
    );

    // Handler-less classes: deployed (nothing fails), each named in a warning with why.
    let r = deploy(&srv, &[("silent", SILENT)]).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let warnings = r.json()["warnings"].as_array().unwrap().clone();
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    assert_eq!(warnings[0]["class"], "Lower");
    assert!(
        warnings[0]["message"]
            .as_str()
            .unwrap()
            .contains("handle_get is not a handler: HTTP verbs are upper case (handle_GET)"),
        "{warnings:#?}"
    );
    assert_eq!(warnings[1]["class"], "Typo");
    assert!(
        warnings[1]["message"]
            .as_str()
            .unwrap()
            .contains("handel is not a handler: did you mean handle?"),
        "{warnings:#?}"
    );

    // The same source again: no new version, the report says unchanged.
    let r = deploy(&srv, &[("hot", &hello(2))]).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let before = config_version(&srv).await;
    let r = deploy(&srv, &[("hot", &hello(2))]).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let rep = r.json();
    assert_eq!(rep["modules"], json!([]));
    assert_eq!(rep["unchanged"], json!(["hot"]));
    assert_eq!(
        rep["unchanged_modules"],
        json!([{"name": "hot", "version": 2, "services": ["hot.hello", "hot.bye"]}])
    );
    assert_eq!(config_version(&srv).await, before);
    let history = srv
        .admin("GET", "/v1/modules/hot/versions", Some(&token), b"")
        .await
        .json();
    assert_eq!(history["versions"].as_array().unwrap().len(), 2);
    // So a rollback goes back to the previous different version.
    let r = srv
        .admin("POST", "/v1/modules/hot/rollback", Some(&token), b"")
        .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(srv.get("/hot").await.json()["version"], 1);

    // Several modules, one unchanged: the others get new versions, it does not.
    let r = deploy(&srv, &[("hot", &hello(3)), ("util", "X = 1\n")]).await;
    let rep = r.json();
    assert_eq!(rep["modules"].as_array().unwrap().len(), 1, "{rep}");
    assert_eq!(rep["modules"][0]["name"], "hot");
    assert_eq!(rep["unchanged"], json!(["util"]));

    // skip_unchanged: false stores a new version anyway.
    let body = json!({"modules": [{"name": "util", "source": "X = 1\n"}], "skip_unchanged": false});
    let r = post_modules(&srv, &body).await;
    assert_eq!(r.json()["modules"][0]["version"], 2, "{}", text(&r));

    // The same source with an origin where the active version has none (deployed before
    // schema 22, or without one): a new version, which records it.
    let send = |origin: Option<&str>| {
        let mut m = json!({"name": "util", "source": "X = 1\n"});
        if let Some(o) = origin {
            m["origin"] = o.into();
        }
        json!({"modules": [m]}).to_string()
    };
    let post = |body: String| {
        let (srv, token) = (&srv, token.clone());
        async move {
            srv.admin("POST", "/v1/modules", Some(&token), body.as_bytes())
                .await
        }
    };
    let r = post(send(Some("/srv/app/util.py"))).await;
    assert_eq!(r.json()["modules"][0]["version"], 3, "{}", text(&r));
    let util = srv
        .admin("GET", "/v1/modules/util", Some(&token), b"")
        .await;
    assert!(text(&util).contains("/srv/app/util.py"), "{}", text(&util));
    // Again from the same file: unchanged; from another file: a new version; without an
    // origin (the dashboard's upload): unchanged, the stored origin stays.
    let r = post(send(Some("/srv/app/util.py"))).await;
    assert_eq!(r.json()["unchanged"], json!(["util"]), "{}", text(&r));
    let r = post(send(Some("/srv/other/util.py"))).await;
    assert_eq!(r.json()["modules"][0]["version"], 4, "{}", text(&r));
    let r = post(send(None)).await;
    assert_eq!(r.json()["unchanged"], json!(["util"]), "{}", text(&r));
    srv.assert_no_errors(&[]);
}

#[tokio::test]
async fn oxbus_deploy_prints_services_warnings_and_unchanged() {
    let srv = Env::new().workers(1).start().await;
    let dir = srv.dir.join("src");
    std::fs::create_dir_all(&dir).unwrap();
    let hot = dir.join("hot.py");
    std::fs::write(&hot, hello(1)).unwrap();
    let silent = dir.join("silent.py");
    std::fs::write(&silent, SILENT).unwrap();

    let out = srv.cli(&["deploy", hot.to_str().unwrap(), silent.to_str().unwrap()]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("deployed hot version 1")
            && stdout.contains("services: hot.hello, hot.bye"),
        "{stdout}"
    );
    assert!(stdout.contains("deployed silent version 1"), "{stdout}");
    assert!(stdout.contains("no services"), "{stdout}");
    assert!(
        stderr.contains("warning: class silent.Lower defines no handler")
            && stderr.contains("warning: class silent.Typo defines no handler"),
        "{stderr}"
    );

    // Unchanged: exit 0, said so, no new version.
    let out = srv.cli(&["deploy", hot.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("unchanged hot version 1") && stdout.contains("nothing deployed"),
        "{stdout}"
    );

    // --force: the same source gets a new version all the same (repairs a worker that did
    // not switch), and the count reads "1 worker".
    let out = srv.cli(&["deploy", "--force", hot.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("deployed hot version 2") && !stdout.contains("unchanged"),
        "{stdout}"
    );
    assert!(
        stdout.contains("(deployed through): ok (1 worker)")
            && stdout.contains("1 worker acknowledged"),
        "{stdout}"
    );
    assert!(!stdout.contains("worker(s)"), "{stdout}");

    // A duplicate service name: once, both classes named, no "(?)".
    let copy = dir.join("copycat.py");
    std::fs::write(
        &copy,
        "from oxbus import Service\n\n\nclass Again(Service):\n    name = 'hot.hello'\n\n    \
         def handle(self):\n        pass\n",
    )
    .unwrap();
    let out = srv.cli(&["deploy", copy.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.matches("duplicate service name").count(),
        1,
        "{stderr}"
    );
    // Each class with the file it was deployed from.
    let hot = std::path::absolute(&hot).unwrap();
    let copy = std::path::absolute(&copy).unwrap();
    assert!(
        stderr.contains(&format!(
            "class hot.Hello ({}) and class copycat.Again ({}) both define it",
            hot.display(),
            copy.display()
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("(?)"), "{stderr}");
    srv.assert_no_errors(&[]);
}

#[tokio::test]
async fn pickup_logs_the_services_and_the_warnings() {
    let srv = Env::new().workers(1).pickup().start().await;
    std::fs::write(srv.pickup_dir().join("silent.py"), SILENT).unwrap();
    eventually(WAIT, "the pickup deploy logged", || async {
        srv.log().contains("pickup: deployed").then_some(())
    })
    .await;
    let warnings = srv.log_lines("pickup: class silent.");
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    assert!(warnings.iter().all(|l| l.contains("WARN")), "{warnings:#?}");
    assert!(
        warnings[0].contains("handle_get is not a handler"),
        "{warnings:#?}"
    );
    std::fs::write(srv.pickup_dir().join("hot.py"), hello(1)).unwrap();
    eventually(WAIT, "hot deployed", || async {
        srv.log_lines("pickup: deployed")
            .iter()
            .any(|l| l.contains("hot v1 [hot.hello, hot.bye]"))
            .then_some(())
    })
    .await;
    srv.assert_no_errors(&[]);
}

/// A module that reads a file beside it and one that fails, for `__file__` and tracebacks.
const SHOP: &str = r#"import json
import os

from oxbus import Service


class Prices(Service):
    name = 'shop.prices'

    def handle(self):
        with open(os.path.join(os.path.dirname(__file__), 'prices.json')) as f:
            self.response.payload = {'file': __file__, 'prices': json.load(f)}


class Boom(Service):
    name = 'shop.boom'

    def handle(self):
        raise KeyError('boom-from-the-file')
"#;

#[tokio::test]
async fn a_deployed_file_is_its_own_file_name_in_file_and_tracebacks() {
    deployed_file(Env::new().workers(2).pickup().start().await).await;
}

#[tokio::test]
async fn a_deployed_file_is_its_own_file_name_in_file_and_tracebacks_on_postgres() {
    let (env, _db) = Env::new().workers(2).pickup().postgres_store();
    deployed_file(env.start().await).await;
}

async fn deployed_file(srv: Server) {
    let token = srv.admin_token();
    let dir = srv.dir.join("src");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("shop.py");
    std::fs::write(&file, SHOP).unwrap();
    std::fs::write(dir.join("prices.json"), r#"{"tea": 3}"#).unwrap();
    let origin = std::path::absolute(&file).unwrap();
    let origin = origin.to_str().unwrap();

    let out = srv.cli(&["deploy", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Stored with the version, and what every worker runs: __file__ works.
    let m = srv
        .admin("GET", "/v1/modules/shop", Some(&token), b"")
        .await
        .json();
    assert_eq!(m["origin"], origin);
    for _ in 0..4 {
        let r = srv
            .admin("POST", "/v1/invoke/shop.prices", Some(&token), b"{}")
            .await;
        assert_eq!(r.status, 200, "{}", text(&r));
        assert_eq!(r.json(), json!({"file": origin, "prices": {"tea": 3}}));
    }
    // A traceback names the file and shows the deployed line.
    let r = srv
        .admin("POST", "/v1/invoke/shop.boom", Some(&token), b"{}")
        .await;
    assert_eq!(r.status, 500);
    let want = format!("File \"{origin}\", line 19, in handle");
    eventually(WAIT, "the traceback in the log", || async {
        srv.log().contains(&want).then_some(())
    })
    .await;
    assert!(srv.log().contains("raise KeyError('boom-from-the-file')"));
    // A restarted server's workers load it under the same name.
    let srv = srv.restart().await;
    let r = srv
        .admin("POST", "/v1/invoke/shop.prices", Some(&token), b"{}")
        .await;
    assert_eq!(r.json()["file"], origin, "{}", text(&r));

    // The pickup directory's file is the origin of what it deploys.
    let picked = srv.pickup_dir().join("picked.py");
    std::fs::write(srv.pickup_dir().join("prices.json"), r#"{"coffee": 4}"#).unwrap();
    std::fs::write(&picked, SHOP.replace("shop.", "picked.")).unwrap();
    let r = eventually(WAIT, "picked deployed", || async {
        let r = srv
            .admin("POST", "/v1/invoke/picked.prices", Some(&token), b"{}")
            .await;
        (r.status == 200).then_some(r)
    })
    .await;
    let canonical = std::fs::canonicalize(&picked).unwrap();
    assert_eq!(
        r.json(),
        json!({"file": canonical.to_str().unwrap(), "prices": {"coffee": 4}})
    );

    // The admin API without an origin: the made-up name (no __file__); a relative one: 400.
    let r = deploy(&srv, &[("bare", "X = __file__\n")]).await;
    assert_eq!(r.status, 422, "{}", text(&r));
    assert!(
        r.json()["traceback"]
            .as_str()
            .unwrap()
            .contains("<oxbus:bare@v0>")
    );
    let body = json!({"modules": [{"name": "rel", "source": "X = 1\n", "origin": "rel.py"}]});
    let r = post_modules(&srv, &body).await;
    assert_eq!(r.status, 400, "{}", text(&r));
    assert!(
        text(&r).contains("origin must be the absolute POSIX path"),
        "{}",
        text(&r)
    );
    // Not POSIX, not normalised, or with a line separator: 400 too.
    for bad in [
        "C:\\src\\x.py",
        "\\\\host\\share\\x.py",
        "/srv/../etc/x.py",
        "/srv/a\u{2028}b.py",
    ] {
        let body = json!({"modules": [{"name": "odd", "source": "X = 1\n", "origin": bad}]});
        let r = post_modules(&srv, &body).await;
        assert_eq!(r.status, 400, "{bad}: {}", text(&r));
        assert!(
            text(&r).contains("origin must be the absolute POSIX path"),
            "{}",
            text(&r)
        );
    }
    // Two modules of one deploy from one file: 400, both named.
    let body = json!({"modules": [
        {"name": "one", "source": "X = 1\n", "origin": "/srv/app/same.py"},
        {"name": "two", "source": "Y = 1\n", "origin": "/srv/app/same.py"},
    ]});
    let r = post_modules(&srv, &body).await;
    assert_eq!(r.status, 400, "{}", text(&r));
    assert!(
        text(&r).contains(
            "modules one and two have the same origin /srv/app/same.py: each module of a \
             deploy needs a file of its own"
        ),
        "{}",
        text(&r)
    );
    srv.assert_no_errors(&["shop.boom"]);
}

/// A module whose second import (the activation after the check, in the one worker) fails,
/// and whose others succeed.
fn flaky(log: &std::path::Path) -> String {
    format!(
        "with open({log:?}, 'a+') as f:\n    f.seek(0)\n    n = len(f.read())\n    \
         f.write('x')\nif n == 1:\n    raise RuntimeError('the activation fails once')\n\n\
         from oxbus import Service\n\n\nclass Flaky(Service):\n    name = 'flaky'\n\n    \
         def handle(self):\n        self.response.payload = {{'v': 2}}\n"
    )
}

#[tokio::test]
async fn an_unchanged_deploy_gives_a_worker_that_did_not_switch_the_active_version() {
    let srv = Env::new().workers(1).start().await;
    let dir = srv.dir.join("src");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("flaky.py");
    let v1 = "from oxbus import Service\n\n\nclass Flaky(Service):\n    name = 'flaky'\n\n    \
              def handle(self):\n        self.response.payload = {'v': 1}\n";
    std::fs::write(&file, v1).unwrap();
    let out = srv.cli(&["deploy", file.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let invoke = || {
        let out = srv.cli(&["invoke", "flaky"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        invoke().contains("\"v\": 1") || invoke().contains("\"v\":1"),
        "{}",
        invoke()
    );

    // Version 2: the check imports it, the worker's activation fails: it keeps version 1.
    std::fs::write(&file, flaky(&srv.dir.join("imports"))).unwrap();
    let out = srv.cli(&["deploy", file.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{stdout}{stderr}");
    // (A deploy answered 500 is printed as the server's JSON.)
    assert!(
        stderr.contains("\"ok\":false") && stderr.contains("the activation fails once"),
        "{stdout}{stderr}"
    );
    let v1_running = invoke();
    assert!(
        v1_running.contains('1') && !v1_running.contains('2'),
        "{v1_running}"
    );

    // The same file again: unchanged (no new version), but the worker behind gets it.
    let out = srv.cli(&["deploy", file.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("unchanged flaky version 2"), "{stdout}");
    assert!(
        stdout.contains("re-activated the active versions on 1 worker that did not run them: ok"),
        "{stdout}"
    );
    let v2_running = invoke();
    assert!(
        v2_running.contains('2') && !v2_running.contains('1'),
        "{v2_running}"
    );

    // Every worker runs it now: an unchanged deploy touches none.
    let out = srv.cli(&["deploy", "--output", "json", file.to_str().unwrap()]);
    let rep: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rep["workers"], json!([]), "{rep}");
    srv.assert_no_errors(&["the activation fails once", "flaky"]);
}
