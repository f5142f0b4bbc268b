//! The real server with its workers on each extra CPython named in `OXBUS_TEST_PYTHONS`
//! (space-separated paths; `.ci/run` fills it with the oldest and newest versions the machine
//! has): start, serve, hot-deploy. Without the variable, the test says so and runs on
//! `python3` only.

use oxbus_integration::*;
use serde_json::json;

const MODULE: &str = r#"
import sys
from oxbus import Service

class Version(Service):
    name = 'py.version'

    def handle(self):
        self.response.payload = {'version': '%d.%d' % sys.version_info[:2]}
"#;

#[tokio::test]
async fn workers_run_on_every_supported_interpreter_given() {
    let list = std::env::var("OXBUS_TEST_PYTHONS").unwrap_or_default();
    let mut pythons: Vec<String> = list.split_whitespace().map(str::to_owned).collect();
    if pythons.is_empty() {
        eprintln!("OXBUS_TEST_PYTHONS is empty: testing python3 only");
    }
    pythons.insert(0, "python3".into());
    for py in pythons {
        let out = std::process::Command::new(&py)
            .args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
            .output()
            .unwrap_or_else(|e| panic!("{py}: {e}"));
        let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let srv = Env::new()
            .workers(2)
            .python(&py)
            .with_test_services()
            .channel("/py", &["GET"], "py.version")
            .start()
            .await;
        let r = srv.post_json("/echo", &json!({"a": 1})).await;
        assert_eq!(r.status, 200, "{py}: {:?}", r.body);
        let body = json!({"modules": [{"name": "pyver", "source": MODULE}]});
        let r = srv
            .admin(
                "POST",
                "/v1/modules",
                Some(&srv.admin_token()),
                body.to_string().as_bytes(),
            )
            .await;
        assert_eq!(r.status, 200, "{py}: {:?}", r.body);
        let r = srv.get("/py").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["version"], version.as_str(), "{py}");
        srv.assert_no_errors(&[]);
    }
}
