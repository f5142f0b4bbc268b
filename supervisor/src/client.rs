//! The CLI's client of the admin API: where the server is, the token, and one request.
//!
//! Commands that talk to a server take `--env DIR` (the address and token of the
//! environment `oxbus quickstart` made) or `--server URL --token TOKEN` (also
//! `OXBUS_SERVER`, `OXBUS_TOKEN`).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::path::Path;

/// Where and how to reach an admin API.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port`
    pub authority: String,
    pub token: String,
}

impl Target {
    /// From an environment directory (its server.toml and token file).
    pub fn from_env_dir(dir: &Path) -> Result<Target, String> {
        let settings = crate::config::Settings::load(&dir.join("server.toml"), std::env::vars())
            .map_err(|e| e.to_string())?;
        let file = settings.admin_token_file();
        let token = std::fs::read_to_string(&file)
            .map_err(|e| {
                format!(
                    "cannot read the admin token {}: {e} (has the server run once?)",
                    file.display()
                )
            })?
            .trim()
            .to_owned();
        let mut addr = settings.admin.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        Ok(Target {
            authority: addr.to_string(),
            token,
        })
    }

    /// From `--server URL` (`http://host:port` or `host:port`) and a token.
    pub fn from_url(url: &str, token: &str) -> Result<Target, String> {
        let authority = url
            .strip_prefix("http://")
            .unwrap_or(url)
            .trim_end_matches('/')
            .to_owned();
        if url.starts_with("https://") || authority.is_empty() || authority.contains('/') {
            return Err(format!("--server {url:?}: expected http://host:port"));
        }
        Ok(Target {
            authority,
            token: token.to_owned(),
        })
    }

    /// One request; returns the status and the body.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Bytes), String> {
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|e| format!("cannot reach the admin API at {}: {e}", self.authority))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.authority)
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    }
}
