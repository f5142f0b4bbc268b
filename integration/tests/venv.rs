//! A worker running in a separate venv (not the system interpreter) whose service imports and
//! uses a native-wheel package installed there (numpy).
//!
//! The venv is made once under target/ and reused; making it needs PyPI (reachable here and in
//! CI). If it cannot be made, the test fails loudly: it never skips.

use oxbus_integration::*;
use serde_json::json;
use std::path::PathBuf;

fn venv() -> PathBuf {
    package_venv("test-venv-numpy", "numpy", "numpy")
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
