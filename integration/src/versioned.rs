//! A one-service module (`c.version`, module `cmod`) whose answer names its version: the
//! cluster tests deploy versions of it and watch which one each server serves.

use crate::{Resp, Server};

/// The source of `cmod` version `version`.
pub fn module(version: u32) -> String {
    format!(
        "from oxbus import Service\n\nclass V(Service):\n    name = 'c.version'\n\n    def handle(self):\n        self.response.payload = {{'version': {version}}}\n"
    )
}

/// Deploys `cmod` version `version` through `srv`'s admin API.
pub async fn deploy(srv: &Server, version: u32) -> Resp {
    let body = serde_json::json!({"modules": [{"name": "cmod", "source": module(version)}]});
    srv.admin(
        "POST",
        "/v1/modules",
        Some(&srv.admin_token()),
        body.to_string().as_bytes(),
    )
    .await
}
