//! `oxbus quickstart`: a ready-to-run environment directory with sample services.
//!
//! The environment is an ordinary server directory (server.toml, services/ and the pickup
//! directory pickup/), so what a quickstart runs is exactly what `oxbus server --config
//! DIR/server.toml` runs, with production defaults (no per-request logging) — which is also
//! why the benchmark uses it.

use std::io;
use std::path::Path;

const SAMPLE_SERVICES: &str = r#""""Sample services created by `oxbus quickstart`. Edit freely."""

from oxbus import Service, NotFound


class Echo(Service):
    """POST /echo: returns the JSON object it receives, plus "ok": true."""

    name = 'demo.echo'

    def handle(self):
        payload = self.request.payload
        if not isinstance(payload, dict):
            payload = {'payload': payload}
        payload['ok'] = True
        self.response.payload = payload


class Hello(Service):
    """GET /hello/{name}?greeting=Hi: path parameters, query string and SimpleIO."""

    name = 'demo.hello'
    input = 'name', '-greeting'
    output = 'message', 'length'

    def handle(self):
        greeting = self.request.input.greeting or 'Hello'
        message = f'{greeting}, {self.request.input.name}!'
        self.logger.info('greeting %s', self.request.input.name)
        self.response.payload = {'message': message, 'length': len(message)}


class Customer(Service):
    """GET /customers/{customer_id}: typed input (customer_id is an int) and NotFound."""

    name = 'demo.customer.get'
    input = 'customer_id'

    customers = {1: 'Ann', 2: 'Bob'}

    def handle(self):
        cid = self.request.input.customer_id
        if cid not in self.customers:
            raise NotFound(self.cid, f'no customer {cid}')
        self.response.payload = {'customer_id': cid, 'name': self.customers[cid]}


class Slow(Service):
    """GET /slow: an async service (many run at once on the worker's event loop)."""

    name = 'demo.slow'

    async def handle(self):
        import asyncio
        await asyncio.sleep(0.05)
        self.response.payload = {'slept_ms': 50}
"#;

fn server_toml(port: u16, workers: Option<u32>) -> String {
    let workers = match workers {
        Some(n) => format!("workers = {n}\n"),
        None => "# workers = 2              # default: min(CPUs, 8)\n".to_owned(),
    };
    format!(
        r#"# Oxbus server settings, created by `oxbus quickstart`.
# Every key can be overridden with OXBUS_<SECTION>_<KEY>, e.g. OXBUS_SERVER_WORKERS=4.

[server]
listen = "127.0.0.1:{port}"
{workers}python = "python3"        # a venv's bin/python works too
threads = 8                # concurrent `def handle` calls per worker
services_dir = "services"
log_level = "info"

[http]
request_timeout_ms = 30000
max_body_bytes = 10485760
keepalive_timeout_ms = 75000
# shutdown_delay_ms = 15000  # behind a load balancer: keep serving with /readyz 503 first

[store]
url = "sqlite:oxbus.db"    # the config store; postgres://user@host/db for a cluster
key_file = "secret.key"    # seals secrets in the store; created at first start, keep it safe

[admin]
listen = "127.0.0.1:{admin_port}"
token_file = "admin.token"   # created with a random token at first start

[pickup]
dir = "pickup"             # a *.py saved (or git pulled) here is hot-deployed; remove to turn off

[[channels]]
url_path = "/echo"
methods = ["POST"]
service = "demo.echo"

[[channels]]
url_path = "/hello/{{name}}"
methods = ["GET"]
service = "demo.hello"

[[channels]]
url_path = "/customers/{{customer_id}}"
methods = ["GET"]
service = "demo.customer.get"

[[channels]]
url_path = "/slow"
methods = ["GET"]
service = "demo.slow"
"#,
        admin_port = port.wrapping_add(1)
    )
}

/// Creates the environment in `dir` unless it already has a server.toml. Returns true when
/// it was created.
pub fn ensure_env(dir: &Path, port: u16, workers: Option<u32>) -> io::Result<bool> {
    let config = dir.join("server.toml");
    if config.exists() {
        return Ok(false);
    }
    std::fs::create_dir_all(dir.join("services"))?;
    std::fs::create_dir_all(dir.join("pickup"))?;
    std::fs::write(dir.join("services/demo.py"), SAMPLE_SERVICES)?;
    std::fs::write(&config, server_toml(port, workers))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_env_parses_and_is_reused() {
        let dir = std::env::temp_dir().join(format!("oxbus-qs-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(ensure_env(&dir, 18080, Some(2)).unwrap());
        let s = crate::config::Settings::load(&dir.join("server.toml"), Vec::new()).unwrap();
        assert_eq!(s.worker_count(), 2);
        assert_eq!(s.channels.len(), 4);
        assert!(s.services_dir().join("demo.py").is_file());
        assert_eq!(s.pickup_dir(), Some(dir.join("pickup")));
        assert!(dir.join("pickup").is_dir());
        assert!(!ensure_env(&dir, 1, None).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
