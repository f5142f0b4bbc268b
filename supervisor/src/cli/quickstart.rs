//! `oxbus quickstart`: a ready-to-run environment directory with sample services.
//!
//! The environment is an ordinary server directory (server.toml, services/ and the pickup
//! directory pickup/), so what a quickstart runs is exactly what `oxbus server --config
//! DIR/server.toml` runs, with production defaults (no per-request logging) — which is also
//! why the benchmark uses it.

use std::io;
use std::path::Path;
use std::process::ExitCode;

use super::format::shell_word;
use super::{CliError, fail};
use crate::config::{MAX_WORKERS, Settings};
use crate::model::channel::{Channel, DataFormat};
use crate::model::outgoing::{RestConn, SqlConn};
use crate::model::pubsub::{Endpoint, Subscription, Topic};
use crate::model::redis::RedisConn;
use crate::model::security::SecurityDef;
use crate::store::{Plan, Store, StoreError};

const SAMPLE_SERVICES: &str = r#""""Sample services created by `oxbus quickstart`. Edit freely."""

from oxbus import NotFound, OutgoingConnectionError, OutgoingTimeout, Service


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


class Visits(Service):
    """GET /visits/{page}: counts visits per page in the server's cache (self.cache)."""

    name = 'demo.visits'
    input = 'page'

    def handle(self):
        page = self.request.input.page
        self.response.payload = {'page': page,
                                 'visits': self.cache.default.incr('visits:' + page)}


class Outgoing(Service):
    """GET /sample/outgoing: outgoing connections, whose pools live in the server (self.out):
    a REST call (the connection demo.self points at this server's own /hello/{name}) and
    SQLite queries (demo.sqlite, the file demo.db next to server.toml)."""

    name = 'demo.outgoing'

    def handle(self):
        rest = self.out.rest['demo.self'].conn.get(
            self.cid, params={'name': 'outgoing', 'greeting': 'Hi'})
        db = self.out.sql['demo.sqlite']
        db.execute('CREATE TABLE IF NOT EXISTS calls '
                   '(id INTEGER PRIMARY KEY, cid TEXT NOT NULL)')
        db.execute('INSERT INTO calls (cid) VALUES (?)', [self.cid])
        calls = db.fetch_value('SELECT count(*) FROM calls')
        self.response.payload = {
            'rest': {'status': rest.status_code, 'data': rest.data},
            'sql': {'calls': calls},
        }


class RedisCounter(Service):
    """GET /sample/redis: a counter in Redis through the server's pooled connection
    demo.redis (127.0.0.1:6379; self.out.redis). Without a Redis there it answers 503 and
    says so: point demo.redis elsewhere with `oxbus out put redis demo.redis FILE`."""

    name = 'demo.redis'

    def handle(self):
        redis = self.out.redis['demo.redis']
        try:
            calls = redis.incr('oxbus:quickstart:calls')
        except (OutgoingConnectionError, OutgoingTimeout) as e:
            self.response.status_code = 503
            self.response.payload = {'error': 'no Redis reachable for demo.redis: %s' % e}
            return
        self.response.payload = {'redis': {'calls': calls}}


class OrderSubscriber(Service):
    """Subscribed to the topic /demo/orders (subscription demo.orders): every message
    published there is delivered to it (self.channel.type == 'pubsub'). It logs each one and
    keeps a count and the last one in the cache; GET /demo/orders shows them."""

    name = 'demo.orders.subscriber'

    def handle(self):
        for msg in self.request.pubsub.messages:
            data = msg.data if isinstance(msg.data, str) else repr(msg.data)
            self.logger.info('order %s from %s: %s', msg.msg_id, msg.published_by, data)
            # The last message first, then the count: a reader that sees the count sees
            # that message (or a later one).
            self.cache.default.set('demo.orders:last', {
                'msg_id': msg.msg_id, 'data': data, 'priority': msg.priority,
                'published_by': msg.published_by, 'delivery_count': msg.delivery_count})
            self.cache.default.incr('demo.orders:received')


class OrdersReceived(Service):
    """GET /demo/orders: what demo.orders.subscriber has received."""

    name = 'demo.orders.received'

    def handle(self):
        self.response.payload = {
            'received': self.cache.default.get('demo.orders:received', 0),
            'last': self.cache.default.get('demo.orders:last'),
        }


class Chat(Service):
    """WebSocket /sample/chat: each message goes to every client of the channel (on every
    server of the cluster); the sender gets {"sent_to": n} back (clients on this server)."""

    name = 'demo.chat'

    def handle(self):
        n = self.wsx.channel['sample.chat'].broadcast(
            {'from': self.wsx.client_id, 'message': self.request.payload})
        self.response.payload = {'sent_to': n}


class FileReceived(Service):
    """File channel sample.files: each file put in the environment's files/in folder (once
    its writer closed it) comes here (self.channel.type == 'file-transfer'), then moves to
    files/in/processed/ (a failure: files/in/failed/, the error beside it). GET /sample/files
    shows the count and the last one."""

    name = 'demo.files.on_file'

    def handle(self):
        r = self.request.raw_request
        raw = r['raw_data']
        self.logger.info('file %s (%d bytes) in %s', r['file_name'], r['size'], r['base_dir'])
        # The last file first, then the count: a reader that sees the count sees that file
        # (or a later one).
        self.cache.default.set('demo.files:last', {
            'file_name': r['file_name'], 'relative_dir': r['relative_dir'], 'size': r['size'],
            'lines': raw.count('\n') if isinstance(raw, str) else None,
            'ts_utc': r['ts_utc']})
        self.cache.default.incr('demo.files:received')


class FilesReceived(Service):
    """GET /sample/files: what demo.files.on_file has received."""

    name = 'demo.files.received'

    def handle(self):
        self.response.payload = {
            'received': self.cache.default.get('demo.files:received', 0),
            'last': self.cache.default.get('demo.files:last'),
        }


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
services_dir = "services"  # *.py here: imported by every worker when it starts (no hot reload)
log_level = "info"

[workers]
# max_rss_mb = 1024          # recycle a worker past this resident memory (0 = no ceiling)

[deploy]
# check_timeout_ms = 10000   # a deploy whose imports take longer is refused (422)

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

# Three ways to load service code: `oxbus deploy FILE.py` (stored in the config store,
# live on every server, versioned: the usual way), the pickup directory above (the same,
# by saving a file on the server's machine) and services_dir (imported by each worker at
# its start, never stored: for code shipped with the server, e.g. in a container image).

# REST channels, the sample module and everything else you change at runtime live in the
# config store: `oxbus config export --env .` shows them all.
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
    std::fs::write(&config, server_toml(port, workers))?;
    Ok(true)
}

/// Writes `DIR/proxy.toml` for the proxy quickstart runs in front of its server, rewritten
/// at every start so it follows the server's address: the proxy listens on the server's
/// port + 2, its stats on + 3. Returns (config path, proxy URL, stats URL).
pub fn write_proxy_config(
    dir: &Path,
    server: std::net::SocketAddr,
) -> io::Result<(std::path::PathBuf, String, String)> {
    let ip = server.ip();
    let port = server.port().checked_add(2).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "server port leaves no room for the proxy",
        )
    })?;
    let stats = port.checked_add(1).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "server port leaves no room for the proxy",
        )
    })?;
    let listen = std::net::SocketAddr::new(ip, port);
    let stats_listen = std::net::SocketAddr::new(ip, stats);
    let path = dir.join("proxy.toml");
    std::fs::write(
        &path,
        format!(
            r#"# The load balancer quickstart runs in front of its server (`oxbus proxy`).
# Rewritten by `oxbus quickstart` at every start; copy it to keep changes.

[proxy]
listen = "{listen}"
stats_listen = "{stats_listen}"   # GET /stats (JSON), GET /metrics (Prometheus)
state_dir = "proxy-state"          # pid file and the graceful-upgrade socket
grace_period_s = 1

[upstreams]
servers = ["{server}"]             # or: store = "postgres://…" for a cluster's servers

[health]
path = "/readyz"
interval_ms = 1000
"#
        ),
    )?;
    Ok((
        path,
        format!("http://{listen}"),
        format!("http://{stats_listen}/stats"),
    ))
}

/// The sample channels: one per sample service (`sample.chat` a WebSocket channel).
fn sample_channels() -> Vec<Channel> {
    [
        ("/echo", "POST", "demo.echo"),
        ("/hello/{name}", "GET", "demo.hello"),
        ("/customers/{customer_id}", "GET", "demo.customer.get"),
        ("/slow", "GET", "demo.slow"),
        ("/visits/{page}", "GET", "demo.visits"),
        ("/sample/outgoing", "GET", "demo.outgoing"),
        ("/sample/redis", "GET", "demo.redis"),
        ("/demo/orders", "GET", "demo.orders.received"),
        ("/sample/files", "GET", "demo.files.received"),
    ]
    .into_iter()
    .map(|(path, method, service)| Channel {
        name: Some(path.to_owned()),
        url_path: path.to_owned(),
        methods: vec![method.to_owned()],
        service: service.to_owned(),
        data_format: DataFormat::Json,
        security: None,
        allow_from: Vec::new(),
        rate_limit: None,
        channel_type: crate::model::channel::ChannelType::Rest,
        services: Vec::new(),
        websocket: None,
        params_priority: None,
    })
    .chain(std::iter::once(Channel {
        name: Some("sample.chat".to_owned()),
        url_path: "/sample/chat".to_owned(),
        methods: Vec::new(),
        service: "demo.chat".to_owned(),
        data_format: DataFormat::Json,
        security: None,
        allow_from: Vec::new(),
        rate_limit: None,
        channel_type: crate::model::channel::ChannelType::Websocket,
        services: Vec::new(),
        websocket: None,
        params_priority: None,
    }))
    .collect()
}

/// The security definition of the sample pub/sub channel, its user name, and the file (in
/// the environment) that holds its password.
const PUBSUB_SECURITY: &str = "demo.pubsub";
const PUBSUB_USER: &str = "demo";
pub const PUBSUB_PASSWORD_FILE: &str = "pubsub.password";
/// The folder (in the environment) the sample file channel watches.
pub const SAMPLE_FILES_DIR: &str = "files/in";

/// The sample pub/sub: the channel of the pub/sub REST API at `/pubsub`, whose callers are
/// those of the basic-auth definition `demo.pubsub` (user `demo`, `password`), the endpoint
/// `demo` that lets them publish and subscribe under `/demo/`, the topic `/demo/orders` and
/// the subscription `demo.orders` delivering it to the service `demo.orders.subscriber`.
fn sample_pubsub(
    password: &str,
    key: &crate::secrets::Key,
) -> Result<(Channel, SecurityDef, Endpoint, Topic, Subscription), StoreError> {
    let bad = |what: &str, e: serde_json::Error| {
        StoreError::Invalid(format!("the sample pub/sub {what}: {e}"))
    };
    let channel = serde_json::from_value(serde_json::json!({
        "name": "/pubsub",
        "url_path": "/pubsub",
        "type": "pubsub",
        "security": PUBSUB_SECURITY,
    }))
    .map_err(|e| bad("channel", e))?;
    let security = crate::edge::gate::from_input(
        serde_json::json!({
            "name": PUBSUB_SECURITY,
            "type": "basic",
            "username": PUBSUB_USER,
            "password": password,
        }),
        None,
        None,
        key,
    )
    .map_err(|e| StoreError::Invalid(format!("the sample pub/sub security definition: {e}")))?;
    let endpoint = serde_json::from_value(serde_json::json!({
        "name": "demo",
        "security": PUBSUB_SECURITY,
        "topic_patterns": ["pub=/demo/*", "sub=/demo/*"],
    }))
    .map_err(|e| bad("endpoint", e))?;
    let topic = serde_json::from_value(serde_json::json!({
        "name": "/demo/orders",
        "description": "Sample topic of oxbus quickstart: demo.orders.subscriber gets its messages",
    }))
    .map_err(|e| bad("topic", e))?;
    let sub = serde_json::from_value(serde_json::json!({
        "sub_key": "demo.orders",
        "topic": "/demo/orders",
        "delivery": {"type": "service", "service": "demo.orders.subscriber"},
        "batch_size": 10,
        "retry": {"max_attempts": 5},
        "created_by": "admin:quickstart",
    }))
    .map_err(|e| bad("subscription", e))?;
    Ok((channel, security, endpoint, topic, sub))
}

/// The sample file channel `sample.files`: the files put in `files_dir` (absolute) go to
/// `demo.files.on_file`, then to `files_dir/processed`.
fn sample_file_channel(files_dir: &Path) -> Result<crate::model::files::FileChannel, StoreError> {
    let def: crate::model::files::FileChannel = serde_json::from_value(serde_json::json!({
        "name": "sample.files",
        "service": "demo.files.on_file",
        "directories": [files_dir],
        "recursive": true,
    }))
    .map_err(|e| StoreError::Invalid(format!("the sample file channel: {e}")))?;
    def.validate()
        .map_err(|e| StoreError::Invalid(format!("the sample file channel: {e}")))?;
    Ok(def)
}

/// The sample outgoing connections: `demo.self`, a REST connection to this server's own
/// `/hello/{name}` (so the sample works offline), `demo.sqlite`, an SQLite file `demo.db`
/// in the environment (`db_file`, absolute), and `demo.redis`, a Redis at 127.0.0.1:6379
/// (connected only when used: a machine without one gets the sample's 503).
fn sample_connections(
    listen: std::net::SocketAddr,
    db_file: &Path,
) -> Result<(RestConn, SqlConn, RedisConn), StoreError> {
    let rest = serde_json::from_value(serde_json::json!({
        "name": "demo.self",
        "address": format!("http://{listen}"),
        "url_path": "/hello/{name}",
        "timeout_ms": 5000,
        "pool_size": 4,
    }))
    .map_err(|e| StoreError::Invalid(format!("the sample REST connection: {e}")))?;
    let sql = serde_json::from_value(serde_json::json!({
        "name": "demo.sqlite",
        "engine": "sqlite",
        "url": format!("sqlite://{}", db_file.display()),
        "pool_max": 2,
    }))
    .map_err(|e| StoreError::Invalid(format!("the sample SQL connection: {e}")))?;
    let redis = serde_json::from_value(serde_json::json!({
        "name": "demo.redis",
        "address": "redis://127.0.0.1:6379",
        "pool_size": 2,
        "timeout_ms": 2000,
    }))
    .map_err(|e| StoreError::Invalid(format!("the sample Redis connection: {e}")))?;
    Ok((rest, sql, redis))
}

/// Puts the sample module (`demo`, deployed as version 1), its REST channels, a job and the
/// sample pub/sub (`pubsub_password`: its basic-auth password, sealed with `key`) into a
/// store that holds nothing yet, in one transaction, then the sample outgoing connections
/// (`listen`: the server's address, which `demo.self` calls; `db_file`: `demo.sqlite`'s
/// file), and the sample file channel watching `files_dir`; a store with any history is left
/// alone. Returns whether it seeded.
pub async fn seed(
    store: &Store,
    listen: std::net::SocketAddr,
    db_file: &Path,
    files_dir: &Path,
    pubsub_password: &str,
    key: &crate::secrets::Key,
) -> Result<bool, StoreError> {
    if store.version().await? != 0 {
        return Ok(false);
    }
    // A sample job: demo.visits every minute, as if page "scheduler" were visited.
    let mut job = crate::model::job::JobDef::new(
        "demo-visits",
        crate::model::job::JobType::IntervalBased,
        "demo.visits",
    );
    job.minutes = 1;
    job.extra = Some(serde_json::json!({"page": "scheduler"}));
    let job = job.as_stored(None, chrono::Utc::now());
    let (pubsub_channel, security, endpoint, topic, sub) = sample_pubsub(pubsub_password, key)?;
    let mut channels = sample_channels();
    channels.push(pubsub_channel);
    let plan = Plan {
        put_channels: channels,
        pubsub_topics: crate::store::ObjectChanges {
            put: vec![topic],
            delete: Vec::new(),
        },
        pubsub_subs: crate::store::ObjectChanges {
            put: vec![sub],
            delete: Vec::new(),
        },
        pubsub_endpoints: crate::store::ObjectChanges {
            put: vec![endpoint],
            delete: Vec::new(),
        },
        security: crate::store::ObjectChanges {
            put: vec![security],
            delete: Vec::new(),
        },
        deploy_modules: vec![("demo".to_owned(), SAMPLE_SERVICES.to_owned())],
        jobs: crate::store::ObjectChanges {
            put: vec![job],
            delete: Vec::new(),
        },
        inbound_file: crate::store::ObjectChanges {
            put: vec![sample_file_channel(files_dir)?],
            delete: Vec::new(),
        },
        ..Plan::default()
    };
    store.apply(&plan, "quickstart").await?;
    let (rest, sql, redis) = sample_connections(listen, db_file)?;
    store.put_object(&rest, true, "quickstart").await?;
    store.put_object(&sql, true, "quickstart").await?;
    store.put_object(&redis, true, "quickstart").await?;
    Ok(true)
}

/// `oxbus quickstart`'s options besides its directory.
pub struct Options {
    pub port: Option<u16>,
    pub workers: Option<u32>,
    pub no_proxy: bool,
    pub no_dashboard: bool,
    /// The debugger's port (`--debug[=PORT]`).
    pub debug: Option<u16>,
}

/// `oxbus quickstart [DIR]`: creates the environment if DIR has none (seeding its store),
/// starts the proxy in front of it unless `no_proxy`, and runs the server with a banner
/// saying where everything is.
pub fn command(dir: &Path, options: Options) -> ExitCode {
    match prepare(dir, options) {
        Ok((settings, banner, companions)) => {
            super::server::serve(settings, Some(banner), companions)
        }
        Err(e) => fail(&e),
    }
}

/// Everything before the server runs: (its settings, the banner, the proxy and the
/// dashboard if started).
fn prepare(
    dir: &Path,
    options: Options,
) -> Result<(Settings, String, Vec<std::process::Child>), CliError> {
    let Options {
        port,
        workers,
        no_proxy,
        no_dashboard,
        debug,
    } = options;
    // First, as before anything else: a variable that is not UTF-8 stops the command here.
    let mut env: Vec<(String, String)> = std::env::vars().collect();
    if let Some(w) = workers.filter(|w| *w == 0 || *w > MAX_WORKERS) {
        return Err(CliError::Workers(w));
    }
    if let Some(d) = dir.to_str()
        && debug.is_some()
        && !d.is_empty()
        && d.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(CliError::DebugPortAsDir(d.to_owned()));
    }
    let created =
        ensure_env(dir, port.unwrap_or(17010), workers).map_err(|source| CliError::Create {
            path: dir.to_owned(),
            source,
        })?;
    if let Some(p) = port {
        env.push(("OXBUS_SERVER_LISTEN".into(), format!("\"127.0.0.1:{p}\"")));
        // The admin API sits next to it, as Zato's 17010 / 17011.
        env.push((
            "OXBUS_ADMIN_LISTEN".into(),
            format!("\"127.0.0.1:{}\"", p.wrapping_add(1)),
        ));
    }
    if let Some(w) = workers {
        env.push(("OXBUS_SERVER_WORKERS".into(), w.to_string()));
    }
    if let Some(p) = debug {
        env.push(("OXBUS_DEBUG_PORT".into(), p.to_string()));
    }
    let s = Settings::load(&dir.join("server.toml"), env)?;
    if created {
        seed_store(&s, dir)?;
    }
    let url = format!("http://{}", s.server.listen);
    let mut companions = Vec::new();
    let proxy_line = if no_proxy {
        String::new()
    } else {
        let (child, proxy_url, stats_url) =
            start_proxy(dir, s.server.listen).map_err(|e| CliError::StartProxy(Box::new(e)))?;
        companions.push(child);
        format!(
            "\n  proxy:   {proxy_url} (oxbus proxy in front of the server; stats {stats_url}, log {})",
            dir.join("proxy.log").display()
        )
    };
    let pickup = match s.pickup_dir() {
        Some(d) => format!(
            "\n  pickup:  {} (save or git pull a *.py there: deployed live)",
            d.display()
        ),
        None => String::new(),
    };
    let files_in = std::fs::canonicalize(dir)
        .map(|d| d.join(SAMPLE_FILES_DIR))
        .unwrap_or_else(|_| dir.join(SAMPLE_FILES_DIR));
    let files_line = files_try(&files_in, &url);
    let dashboard_line = if no_dashboard {
        String::new()
    } else {
        let (child, line) = super::quickstart_dashboard::start(dir, &s)?;
        companions.push(child);
        line
    };
    let oxbus = oxbus_command(std::env::current_exe().ok(), std::env::var_os("PATH"));
    let debug_line = match s.debug_port() {
        Some(p) => format!(
            "\n  debug:   debugpy on 127.0.0.1:{p}, one worker (attach VS Code or PyCharm: docs/DEBUGGING.md)"
        ),
        None => String::new(),
    };
    let env_arg = shell_word(&dir.display().to_string());
    let cli_lines = format!(
        "\n  cli:     {oxbus} services --env {env_arg}   (the services; deploy your own: {oxbus} deploy --env {env_arg} my_services.py)\n           {oxbus} cache list --env {env_arg}   (the caches: entries, hits, misses)\n           {oxbus} jobs history demo-visits --env {env_arg}   (a sample job: demo.visits every minute)"
    );
    let banner = format!(
        "{} environment in {}\n  server:  {url}{proxy_line}{dashboard_line}\n  admin:   http://{} (bearer token in {}){pickup}{debug_line}\n  metrics: http://{}/metrics (Prometheus; per service: {oxbus} services --stats --env {env_arg})\n  try:     curl -s -X POST {url}/echo -H 'Content-Type: application/json' -d '{{\"hello\": \"world\"}}'\n           curl -s '{url}/hello/Ann?greeting=Hi'\n           curl -s {url}/visits/home   (a counter in the server's cache)\n           curl -s {url}/sample/outgoing   (outgoing connections demo.self, REST, and demo.sqlite: {oxbus} out list --env {env_arg})\n           curl -s {url}/sample/redis   (a counter in the Redis at 127.0.0.1:6379, connection demo.redis)\n           ws://{listen}/sample/chat   (WebSocket: every message to every client; e.g. pip install websockets; python3 -m websockets ws://{listen}/sample/chat){files_line}{pubsub_lines}{cli_lines}\n  stop:    Ctrl-C (SIGTERM drains gracefully)",
        if created {
            "Created a new"
        } else {
            "Using the"
        },
        dir.display(),
        s.admin.listen,
        s.admin_token_file().display(),
        s.admin.listen,
        pubsub_lines = pubsub_try(dir, &url),
        listen = s.server.listen,
    );
    Ok((s, banner, companions))
}

/// How the banner's command lines run this binary: `oxbus` when that name on `path` is this
/// very program (`exe`), else its full path (e.g. `target/release/oxbus` after `cargo run`),
/// so that every line works pasted into the shell that started the quickstart.
fn oxbus_command(exe: Option<std::path::PathBuf>, path: Option<std::ffi::OsString>) -> String {
    let Some(exe) = exe.and_then(|e| std::fs::canonicalize(e).ok()) else {
        return "oxbus".into();
    };
    let on_path = path
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("oxbus"))
        .find(|c| c.is_file())
        .and_then(|c| std::fs::canonicalize(c).ok());
    if on_path.as_deref() == Some(exe.as_path()) {
        "oxbus".into()
    } else {
        shell_word(&exe.display().to_string())
    }
}

/// The banner's file channel line: a file written into `files_in` (the sample's directory,
/// quoted for the shell), then what the service made of it.
fn files_try(files_in: &Path, url: &str) -> String {
    let file = shell_word(&files_in.join("hello.txt").display().to_string());
    format!(
        "\n           echo hello > {file}; curl -s {url}/sample/files   (file channel sample.files: the file goes to a service, then to processed/)"
    )
}

/// The banner's pub/sub lines: only when the sample's password file is there (a store
/// seeded by this quickstart); the path quoted for the shell.
fn pubsub_try(dir: &Path, url: &str) -> String {
    let pw = dir.join(PUBSUB_PASSWORD_FILE);
    if !pw.is_file() {
        return String::new();
    }
    let pw = pw.display().to_string().replace('\'', r"'\''");
    format!(
        "\n           curl -s -u \"demo:$(cat '{pw}')\" -X POST {url}/pubsub/topic/demo/orders -H 'Content-Type: application/json' -d '{{\"data\": \"hi\"}}'   (pub/sub)\n           curl -s {url}/demo/orders   (what its subscriber, demo.orders.subscriber, received)"
    )
}

/// Seeds a new quickstart environment's config store with the sample module, channels and
/// connections; creates the sample SQLite database `DIR/demo.db` (empty) for `demo.sqlite`.
fn seed_store(s: &Settings, dir: &Path) -> Result<(), CliError> {
    let db_file = std::path::absolute(dir.join("demo.db"))?;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&db_file)
        .map_err(|source| CliError::Write {
            path: db_file.clone(),
            source,
        })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::SeedRuntime)?;
    // The key the server will seal with (a new environment has none yet: made here, as the
    // server would at its first start); the sample pub/sub's password, kept next to the admin
    // token, private.
    let key = crate::secrets::Key::load(None, &s.secret_key_file(), None)
        .map_err(|e| CliError::Io(io::Error::other(e.to_string())))?;
    let password = crate::random::random_hex(12);
    let pw_file = dir.join(PUBSUB_PASSWORD_FILE);
    // Written beside the final name first, and put in place only when the seeding made the
    // definition with it: a store seeded before keeps its password, and the file its.
    let pw_new = dir.join(format!("{PUBSUB_PASSWORD_FILE}.new"));
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::remove_file(&pw_new);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&pw_new)
            .map_err(|source| CliError::Write {
                path: pw_new.clone(),
                source,
            })?;
        writeln!(f, "{password}").map_err(|source| CliError::Write {
            path: pw_new.clone(),
            source,
        })?;
    }
    // Canonical: the channel refuses a folder with `..` (quickstart ../env).
    let files_dir = std::fs::canonicalize(dir)?.join(SAMPLE_FILES_DIR);
    let seeded = rt.block_on(async {
        let store = Store::open(&s.store_url()).await.map_err(CliError::Seed)?;
        let r = seed(
            &store,
            s.server.listen,
            &db_file,
            &files_dir,
            &password,
            &key,
        )
        .await;
        store.close().await;
        r.map_err(CliError::Seed)
    });
    match seeded {
        Ok(true) => std::fs::rename(&pw_new, &pw_file).map_err(|source| CliError::Write {
            path: pw_file.clone(),
            source,
        }),
        other => {
            let _ = std::fs::remove_file(&pw_new);
            other.map(drop)
        }
    }
}

/// Starts `oxbus SUBCOMMAND --config CONFIG --exit-with-parent` beside quickstart's server
/// (the proxy, the dashboard): it stops with quickstart, and by itself if quickstart dies;
/// its output goes to DIR/SUBCOMMAND.log.
pub(super) fn spawn_companion(
    dir: &Path,
    subcommand: &str,
    config: &Path,
) -> Result<std::process::Child, CliError> {
    let config = std::path::absolute(config)?;
    let log = std::fs::File::create(dir.join(format!("{subcommand}.log")))?;
    Ok(std::process::Command::new(std::env::current_exe()?)
        .arg(subcommand)
        .arg("--config")
        .arg(&config)
        .arg("--exit-with-parent")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?)
}

/// Starts `oxbus proxy` in front of quickstart's server (it stops with quickstart, and if
/// quickstart dies, by itself). Its log goes to DIR/proxy.log.
fn start_proxy(
    dir: &Path,
    server: std::net::SocketAddr,
) -> Result<(std::process::Child, String, String), CliError> {
    let (config, url, stats) =
        write_proxy_config(dir, server).map_err(|source| CliError::Write {
            path: dir.join("proxy.toml"),
            source,
        })?;
    // The proxy resolves the paths in its file against the file's directory.
    let child = spawn_companion(dir, "proxy", &config)?;
    Ok((child, url, stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_number_after_debug_read_as_the_directory_is_refused_creating_nothing() {
        let options = |debug| Options {
            port: None,
            workers: None,
            no_proxy: true,
            no_dashboard: true,
            debug,
        };
        let name = format!("{}", 40_000 + std::process::id() % 10_000);
        let e = prepare(Path::new(&name), options(Some(5678)))
            .map(|_| ())
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "--debug takes its port after '=': --debug={name} (for an environment directory named {name}, write ./{name})"
            )
        );
        assert!(!Path::new(&name).exists());
    }

    #[test]
    fn created_env_parses_and_is_reused() {
        let dir = std::env::temp_dir().join(format!("oxbus-qs-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(ensure_env(&dir, 18080, Some(2)).unwrap());
        let s = crate::config::Settings::load(&dir.join("server.toml"), Vec::new()).unwrap();
        assert_eq!(s.worker_count(), 2);
        assert!(s.channels.is_empty(), "channels live in the store");
        assert!(s.services_dir().is_dir());
        assert_eq!(s.pickup_dir(), Some(dir.join("pickup")));
        assert!(dir.join("pickup").is_dir());
        assert!(!ensure_env(&dir, 1, None).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_banner_runs_oxbus_by_name_only_when_the_path_finds_this_binary() {
        let base = std::env::temp_dir().join(format!("oxbus-qs-bin {}", std::process::id()));
        let (on, off) = (base.join("on"), base.join("off"));
        std::fs::create_dir_all(&on).unwrap();
        std::fs::create_dir_all(&off).unwrap();
        std::fs::write(on.join("oxbus"), "").unwrap();
        std::fs::write(off.join("oxbus"), "").unwrap();
        let path = |dirs: &[&std::path::Path]| Some(std::env::join_paths(dirs).unwrap());
        // This binary first on PATH: its name is enough.
        assert_eq!(
            oxbus_command(Some(on.join("oxbus")), path(&[&on, &off])),
            "oxbus"
        );
        // Not on PATH, or another oxbus first: the full path, quoted for the shell.
        let full = format!("'{}'", on.join("oxbus").display());
        assert_eq!(oxbus_command(Some(on.join("oxbus")), path(&[&off])), full);
        assert_eq!(oxbus_command(Some(on.join("oxbus")), None), full);
        assert_eq!(
            oxbus_command(Some(on.join("oxbus")), path(&[&off, &on])),
            full
        );
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn the_pubsub_line_needs_the_password_file_and_quotes_its_path() {
        let dir = std::env::temp_dir().join(format!("oxbus qs-try {}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(pubsub_try(&dir, "http://127.0.0.1:1"), "");
        std::fs::write(dir.join(PUBSUB_PASSWORD_FILE), "pw\n").unwrap();
        let line = pubsub_try(&dir, "http://127.0.0.1:1");
        let want = format!(
            "-u \"demo:$(cat '{}')\"",
            dir.join(PUBSUB_PASSWORD_FILE).display()
        );
        assert!(line.contains(&want), "{line}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_file_channel_line_quotes_its_path() {
        let line = files_try(Path::new("/tmp/my env/files/in"), "http://127.0.0.1:1");
        assert!(
            line.contains("echo hello > '/tmp/my env/files/in/hello.txt'; curl -s http://127.0.0.1:1/sample/files"),
            "{line}"
        );
        let line = files_try(Path::new("/srv/qs/files/in"), "http://127.0.0.1:1");
        assert!(
            line.contains("echo hello > /srv/qs/files/in/hello.txt;"),
            "{line}"
        );
    }

    #[tokio::test]
    async fn seed_fills_an_empty_store_once() {
        let dir = std::env::temp_dir().join(format!("oxbus-qs-seed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite:{}", dir.join("oxbus.db").display());
        let store = Store::open(&url).await.unwrap();
        let listen: std::net::SocketAddr = "127.0.0.1:18080".parse().unwrap();
        let db = dir.join("demo.db");
        let key = crate::secrets::Key::create(&dir.join("secret.key")).unwrap();
        assert!(
            seed(
                &store,
                listen,
                &db,
                &db.with_extension("files"),
                "pw-demo",
                &key
            )
            .await
            .unwrap()
        );
        let channels = store.channels().await.unwrap();
        assert_eq!(channels.len(), 11);
        let files: Vec<crate::model::files::FileChannel> = store.objects().await.unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].service, "demo.files.on_file");
        assert_eq!(
            files[0].directories,
            vec![db.with_extension("files").display().to_string()]
        );
        assert!(
            channels
                .iter()
                .any(|c| c.url_path == "/sample/chat" && c.channel_type.as_str() == "websocket"),
            "{channels:?}"
        );
        assert!(
            channels
                .iter()
                .any(|c| c.url_path == "/pubsub" && c.channel_type.as_str() == "pubsub"),
            "the pub/sub REST API's channel"
        );
        // The sample topic and its subscription, delivered to the sample service.
        let topics: Vec<Topic> = store.objects().await.unwrap();
        assert_eq!(topics.len(), 1);
        assert_eq!(topics[0].name, "/demo/orders");
        topics[0].validate().unwrap();
        let subs: Vec<Subscription> = store.objects().await.unwrap();
        assert_eq!(subs.len(), 1);
        subs[0].validate().unwrap();
        assert_eq!(subs[0].topic, "/demo/orders");
        assert!(subs[0].created_at_ms > 0, "made now");
        assert!(SAMPLE_SERVICES.contains("name = 'demo.orders.subscriber'"));
        // Its callers: the basic-auth definition demo.pubsub, allowed /demo/* by the endpoint.
        let security: Vec<SecurityDef> = store.objects().await.unwrap();
        assert_eq!(security.len(), 1);
        assert_eq!(security[0].username.as_deref(), Some("demo"));
        crate::edge::gate::Verifier::compile(&security[0], &key).unwrap();
        let endpoints: Vec<Endpoint> = store.objects().await.unwrap();
        assert!(endpoints[0].allows(crate::model::pubsub::Access::Publish, "/demo/orders"));
        assert!(!endpoints[0].allows(crate::model::pubsub::Access::Publish, "/other"));
        let jobs: Vec<crate::model::job::JobDef> = store.objects().await.unwrap();
        assert_eq!(jobs.len(), 1);
        jobs[0].validate().unwrap();
        crate::edge::router::Router::new(&channels).unwrap();
        let modules = store.active_modules().await.unwrap();
        assert_eq!(modules.len(), 1);
        assert_eq!((modules[0].name.as_str(), modules[0].version), ("demo", 1));
        // The sample connections: REST to this server's /hello/{name}, SQLite in the env.
        let rest: Vec<RestConn> = store.objects().await.unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(
            (rest[0].name.as_str(), rest[0].address.as_str()),
            ("demo.self", "http://127.0.0.1:18080")
        );
        assert_eq!(rest[0].url_path, "/hello/{name}");
        rest[0].validate().unwrap();
        let sql: Vec<SqlConn> = store.objects().await.unwrap();
        assert_eq!(sql.len(), 1);
        assert_eq!(sql[0].url, format!("sqlite://{}", db.display()));
        sql[0].validate().unwrap();
        let redis: Vec<RedisConn> = store.objects().await.unwrap();
        assert_eq!(redis.len(), 1);
        assert_eq!(
            (redis[0].name.as_str(), redis[0].address.as_str()),
            ("demo.redis", "redis://127.0.0.1:6379")
        );
        redis[0].validate().unwrap();
        // The module, channels and job in one transaction; each connection one more.
        assert_eq!(store.version().await.unwrap(), 4);
        assert!(
            !seed(
                &store,
                listen,
                &db,
                &db.with_extension("files"),
                "pw-demo",
                &key
            )
            .await
            .unwrap(),
            "a store with history is left alone"
        );
        assert_eq!(store.version().await.unwrap(), 4);
        store.close().await;
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
