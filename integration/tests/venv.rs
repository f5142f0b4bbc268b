//! A worker running in a separate venv (not the system interpreter) whose service imports and
//! uses a native-wheel package installed there (numpy).
//!
//! The venv is made once under target/ and reused; making it needs PyPI (reachable here and in
//! CI). If it cannot be made, the test fails loudly: it never skips.

use oxbus_integration::*;
use serde_json::json;
use std::path::PathBuf;
use std::process::Command;

fn venv() -> PathBuf {
    let dir = repo_root().join("target/test-venv-numpy");
    let py = dir.join("bin/python");
    let has_numpy = |py: &PathBuf| {
        Command::new(py)
            .args(["-c", "import numpy"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if py.exists() && has_numpy(&py) {
        return py;
    }
    let st = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(st.success(), "python3 -m venv failed");
    let st = Command::new(dir.join("bin/pip"))
        .args(["install", "-q", "--disable-pip-version-check", "numpy"])
        .status()
        .unwrap();
    assert!(st.success(), "pip install numpy into the test venv failed");
    assert!(has_numpy(&py));
    py
}

const NUMPY_SERVICE: &str = r#"
import sys
import numpy as np
from oxbus import Service

class Stats(Service):
    name = 'np.stats'
    input = 'values'

    def handle(self):
        a = np.array(self.request.input['values'], dtype=float)
        self.response.payload = {
            'sum': float(a.sum()), 'mean': float(a.mean()),
            'numpy': np.__version__, 'prefix': sys.prefix, 'base_prefix': sys.base_prefix,
        }
"#;

#[tokio::test]
async fn worker_in_a_venv_uses_numpy() {
    let py = venv();
    let srv = Env::new()
        .workers(2)
        .python(py.to_str().unwrap())
        .service("npsvc.py", NUMPY_SERVICE)
        .channel("/stats", &["POST"], "np.stats")
        .start()
        .await;
    let r = srv
        .post_json("/stats", &json!({"values": [1, 2, 3, 4]}))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let j = r.json();
    assert_eq!(j["sum"], 10.0);
    assert_eq!(j["mean"], 2.5);
    let venv_dir = py
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .canonicalize()
        .unwrap();
    let prefix = PathBuf::from(j["prefix"].as_str().unwrap())
        .canonicalize()
        .unwrap();
    assert_eq!(prefix, venv_dir, "the worker did not run inside the venv");
    assert_ne!(j["prefix"], j["base_prefix"]);
    srv.assert_no_errors(&[]);
}
