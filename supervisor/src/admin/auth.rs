//! Who is calling the admin API, and whether they may: the bearer token is looked up and
//! becomes an [`Identity`] (a name and a [`Role`]) — [`authenticate`] — and the endpoint
//! table [`ENDPOINTS`] says which role each endpoint needs — [`authorize`] (403 naming the
//! role needed). The bootstrap token file is the root identity (role `admin`), never stored;
//! named API tokens (`admin::tokens`) are stored hashed and looked up in the store on every
//! request, so a revoked token stops at once on every server. While the store is
//! unreachable, this server's copy of the store's tokens ([`KnownTokens`], refreshed every
//! `cluster.sync_interval_ms`) still authenticates; other tokens get 503.

use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracing::{debug, warn};

use super::objects::Refused;
use super::{Body, Ctx, error};

/// What an identity may do. Each role may do everything the roles before it may.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything but secret material (no config export, no cache contents).
    Viewer,
    /// A viewer's reads, the config export and cache contents; deploy, rollback,
    /// undeploy, invoke, a job's manual run, closing a WebSocket client.
    Deployer,
    /// Everything.
    Admin,
}

impl Role {
    /// Every role, least first.
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Deployer, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Deployer => "deployer",
            Role::Admin => "admin",
        }
    }

    /// The role named `s` (as [`Role::as_str`] writes it).
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether this role may call an endpoint that needs `needed`.
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The caller of one admin request, as its bearer token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `root` for the bootstrap token file, else the API token's name.
    pub name: String,
    pub role: Role,
}

impl Identity {
    /// The name a change is recorded under (`deployed_by`, `updated_by`): a named token's
    /// own, whatever the request claims; for the root (the token file, which every operator
    /// of the machine may share) the name the request claims (the CLI sends the operator's
    /// user name), else `unclaimed`.
    pub fn recorded_as<'a>(&'a self, claimed: Option<&'a str>, unclaimed: &'a str) -> &'a str {
        if self.name == ROOT {
            claimed.unwrap_or(unclaimed)
        } else {
            &self.name
        }
    }
}

/// The name of the identity the bootstrap token file holds (reserved: no API token has it).
pub const ROOT: &str = "root";

/// What every API token starts with, so that secret scanners recognise one.
pub const TOKEN_PREFIX: &str = "oxbus_";

/// A new API token: [`TOKEN_PREFIX`] and 256 random bits as hex.
pub fn new_token() -> String {
    format!("{TOKEN_PREFIX}{}", crate::random::random_hex(32))
}

/// What the store keeps of a token: its SHA-256 as lower-case hex (the token is 256 random
/// bits, so no slow hash is needed).
pub fn token_hash(token: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// This server's copy of the API tokens in the store, by hash, used only while the store is
/// unreachable. The whole copy is replaced from the store's list every
/// `cluster.sync_interval_ms` while the store answers ([`super::tokens::keep_copy_fresh`]) and
/// by every `GET /v1/tokens`, so a token revoked through another server leaves it within one
/// interval; a lookup adds the token it found and removes one the store no longer has; a
/// revoke through this server removes it at once. A local revoke bumps the copy's
/// generation, and a lookup or list that read the store before it cannot put the revoked
/// token back.
#[derive(Debug, Default)]
pub struct KnownTokens(Mutex<Known>);

#[derive(Debug, Default)]
struct Known {
    by_hash: HashMap<String, Identity>,
    /// Bumped by every revoke through this server.
    generation: u64,
    /// When this server last started a `last_used_at` write, per token hash.
    last_written: HashMap<String, Instant>,
}

impl KnownTokens {
    fn lock(&self) -> std::sync::MutexGuard<'_, Known> {
        self.0.lock().expect("tokens lock")
    }

    /// The copy's generation: read it before reading the store, and pass it to [`Self::found`]
    /// or [`Self::replace`] with what the store said.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    fn get(&self, hash: &str) -> Option<Identity> {
        self.lock().by_hash.get(hash).cloned()
    }

    /// What a lookup read from the store at `generation`: a token found is added unless a
    /// token was revoked through this server since (it may be this one); one not found is
    /// removed.
    fn found(&self, hash: &str, who: Option<Identity>, generation: u64) {
        let mut k = self.lock();
        match who {
            Some(who) if k.generation == generation => {
                k.by_hash.insert(hash.to_owned(), who);
            }
            Some(_) => {}
            None => {
                k.by_hash.remove(hash);
                k.last_written.remove(hash);
            }
        }
    }

    /// Drops the token named `name` (revoked through this server).
    pub fn forget_name(&self, name: &str) {
        let mut k = self.lock();
        k.generation += 1;
        k.by_hash.retain(|_, who| who.name != name);
        let Known {
            by_hash,
            last_written,
            ..
        } = &mut *k;
        last_written.retain(|h, _| by_hash.contains_key(h));
    }

    /// Replaces the whole copy with the store's list (hash, identity) read at `generation`;
    /// nothing changes when a token was revoked through this server since (the next refresh
    /// replaces it). Answers the names of the tokens dropped, `None` when nothing changed.
    pub fn replace(
        &self,
        all: impl IntoIterator<Item = (String, Identity)>,
        generation: u64,
    ) -> Option<Vec<String>> {
        let mut k = self.lock();
        if k.generation != generation {
            return None;
        }
        let new: HashMap<String, Identity> = all.into_iter().collect();
        let mut dropped: Vec<String> = k
            .by_hash
            .iter()
            .filter(|(h, _)| !new.contains_key(*h))
            .map(|(_, who)| who.name.clone())
            .collect();
        dropped.sort();
        k.last_written.retain(|h, _| new.contains_key(h));
        k.by_hash = new;
        Some(dropped)
    }

    /// Whether this request may write token `hash`'s last use now: at most once per
    /// [`LAST_USED_EVERY`] per token on this server (the claim is taken here, before the write
    /// is started, so concurrent requests do not each start one).
    fn claim_write(&self, hash: &str, now: Instant) -> bool {
        let mut k = self.lock();
        match k.last_written.get(hash) {
            Some(t) if now.saturating_duration_since(*t) < LAST_USED_EVERY => false,
            _ => {
                k.last_written.insert(hash.to_owned(), now);
                true
            }
        }
    }
}

/// How often a token's `last_used_at` is written at most (it is shown to the minute).
const LAST_USED_EVERY: Duration = Duration::from_secs(60);

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn unauthorized(msg: &str) -> Response<Body> {
    let mut r = error(StatusCode::UNAUTHORIZED, msg);
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

const WRONG_TOKEN: &str = "missing or wrong bearer token (Authorization: Bearer <token from the \
                           admin token file, or an API token from `oxbus token create`>)";

/// The identity of `req`'s bearer token, or the 401 (503 when the token cannot be checked
/// because the store is unreachable) to answer.
pub async fn authenticate<B>(
    req: &Request<B>,
    cx: &Ctx,
    root_token: &str,
) -> Result<Identity, Response<Body>> {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(presented) = presented else {
        return Err(unauthorized(WRONG_TOKEN));
    };
    if same(presented.as_bytes(), root_token.as_bytes()) {
        return Ok(Identity {
            name: ROOT.to_owned(),
            role: Role::Admin,
        });
    }
    if !presented.starts_with(TOKEN_PREFIX) {
        return Err(unauthorized(WRONG_TOKEN));
    }
    let hash = token_hash(presented);
    // Read before the store: a revoke through this server meanwhile keeps a found token out
    // of the copy.
    let generation = cx.tokens.generation();
    let looked_up = match crate::cluster::sync::store_available(&cx.node, &cx.store).await {
        Ok(()) => cx.store.token_by_hash(&hash).await.map_err(|e| {
            debug!(error = %e, "could not look up an admin API token in the store");
        }),
        Err(_) => Err(()),
    };
    match looked_up {
        Ok(Some(row)) => {
            let Some(role) = Role::parse(&row.role) else {
                // Written by a newer version: refused rather than guessed.
                return Err(unauthorized(&format!(
                    "token '{}' has role {:?}, which this server does not know",
                    row.name, row.role
                )));
            };
            let who = Identity {
                name: row.name,
                role,
            };
            cx.tokens.found(&hash, Some(who.clone()), generation);
            let now = now_ms();
            if row
                .last_used_at
                .is_none_or(|t| now - t >= LAST_USED_EVERY.as_millis() as i64)
                && cx.tokens.claim_write(&hash, Instant::now())
            {
                // Off the request's path: a late or failed write loses a figure, nothing else.
                let store = cx.store.clone();
                tokio::spawn(async move {
                    if let Err(e) = store.token_used(&hash, now).await {
                        warn!(error = %e, "could not record an admin token's last use");
                    }
                });
            }
            Ok(who)
        }
        Ok(None) => {
            cx.tokens.found(&hash, None, generation);
            Err(unauthorized(WRONG_TOKEN))
        }
        // Neither the token nor the store's error is in the answer: the caller may be anyone.
        Err(()) => match cx.tokens.get(&hash) {
            Some(who) => Ok(who),
            None => Err(error(StatusCode::SERVICE_UNAVAILABLE, STORE_DOWN)),
        },
    }
}

/// The 503 for an API token that is not in this server's copy while the store is unreachable.
pub const STORE_DOWN: &str =
    "the config store is unreachable: this API token cannot be checked until it is back";

/// One row of the endpoint table: a method, a path whose `{…}` segments match any one
/// segment, and the least role that may call it.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint {
    pub method: &'static str,
    pub path: &'static str,
    pub role: Role,
}

const fn ep(method: &'static str, path: &'static str, role: Role) -> Endpoint {
    Endpoint { method, path, role }
}

use Role::{Admin, Deployer, Viewer};

/// Every admin endpoint and the least role that may call it. A request that matches no row
/// needs `admin` (fail closed): an endpoint added to `route` without a row here is the
/// root's and admin tokens' only. `GET /metrics` is answered before authentication and is not
/// here. docs/SECURITY.md ("Admin identities and roles") shows this table: keep them in step.
pub const ENDPOINTS: &[Endpoint] = &[
    // The server and the cluster.
    ep("GET", "/v1/info", Viewer),
    ep("GET", "/v1/cluster", Viewer),
    ep("GET", "/v1/openapi", Viewer),
    ep("GET", "/v1/audit", Viewer),
    // Services and modules.
    ep("GET", "/v1/services", Viewer),
    ep("GET", "/v1/services/stats", Viewer),
    ep("GET", "/v1/websocket/clients", Viewer),
    // A rolling restart of this server's workers (as SIGHUP): an admin's; its progress, a
    // viewer's.
    ep("GET", "/v1/workers/restart", Viewer),
    ep("POST", "/v1/workers/restart", Admin),
    ep("DELETE", "/v1/websocket/clients/{id}", Deployer),
    ep("GET", "/v1/services/{name}/stats", Viewer),
    ep("GET", "/v1/modules", Viewer),
    ep("GET", "/v1/modules/{name}", Viewer),
    ep("GET", "/v1/modules/{name}/versions", Viewer),
    ep("GET", "/v1/modules/{name}/versions/{version}", Viewer),
    ep("POST", "/v1/modules", Deployer),
    ep("DELETE", "/v1/modules/{name}", Deployer),
    ep("POST", "/v1/modules/{name}/rollback", Deployer),
    ep("POST", "/v1/invoke/{service}", Deployer),
    // Channels.
    ep("GET", "/v1/channels", Viewer),
    ep("GET", "/v1/channels/{name}", Viewer),
    ep("POST", "/v1/channels", Admin),
    ep("PUT", "/v1/channels/{name}", Admin),
    ep("DELETE", "/v1/channels/{name}", Admin),
    // Secrets: the list has names, who and when, never a value.
    ep("GET", "/v1/secrets", Viewer),
    ep("PUT", "/v1/secrets/{name}", Admin),
    ep("DELETE", "/v1/secrets/{name}", Admin),
    // Security definitions: read without their secret material.
    ep("GET", "/v1/security", Viewer),
    ep("GET", "/v1/security/{name}", Viewer),
    ep("POST", "/v1/security", Admin),
    ep("PUT", "/v1/security/{name}", Admin),
    ep("DELETE", "/v1/security/{name}", Admin),
    // Caches: definitions and figures; their contents are the applications' data.
    ep("GET", "/v1/caches", Viewer),
    ep("GET", "/v1/caches/{name}", Viewer),
    ep("PUT", "/v1/caches/{name}", Admin),
    ep("DELETE", "/v1/caches/{name}", Admin),
    ep("GET", "/v1/caches/{name}/keys", Deployer),
    ep("GET", "/v1/caches/{name}/keys/{key}", Deployer),
    ep("PUT", "/v1/caches/{name}/keys/{key}", Admin),
    ep("DELETE", "/v1/caches/{name}/keys/{key}", Admin),
    ep("POST", "/v1/caches/{name}/clear", Admin),
    // The scheduler.
    ep("GET", "/v1/scheduler", Viewer),
    ep("GET", "/v1/jobs", Viewer),
    ep("GET", "/v1/jobs/{name}", Viewer),
    ep("GET", "/v1/jobs/{name}/runs", Viewer),
    ep("PUT", "/v1/jobs/{name}", Admin),
    ep("DELETE", "/v1/jobs/{name}", Admin),
    ep("POST", "/v1/jobs/{name}/enable", Admin),
    ep("POST", "/v1/jobs/{name}/disable", Admin),
    ep("POST", "/v1/jobs/{name}/execute", Deployer),
    // Outgoing connections: read without their sealed credentials, changed as caches and
    // security definitions are. A ping makes this server call the remote (no change, but an
    // action like running a job): deployer, as `execute` and `invoke` are.
    ep("GET", "/v1/outgoing/rest", Viewer),
    ep("GET", "/v1/outgoing/rest/{name}", Viewer),
    ep("PUT", "/v1/outgoing/rest/{name}", Admin),
    ep("DELETE", "/v1/outgoing/rest/{name}", Admin),
    ep("POST", "/v1/outgoing/rest/{name}/ping", Deployer),
    ep("GET", "/v1/outgoing/rest/{name}/stats", Viewer),
    ep("GET", "/v1/outgoing/sql", Viewer),
    ep("GET", "/v1/outgoing/sql/{name}", Viewer),
    ep("PUT", "/v1/outgoing/sql/{name}", Admin),
    ep("DELETE", "/v1/outgoing/sql/{name}", Admin),
    ep("POST", "/v1/outgoing/sql/{name}/ping", Deployer),
    ep("GET", "/v1/outgoing/sql/{name}/stats", Viewer),
    ep("GET", "/v1/inbound/amqp", Viewer),
    ep("GET", "/v1/inbound/amqp/{name}", Viewer),
    ep("PUT", "/v1/inbound/amqp/{name}", Admin),
    ep("DELETE", "/v1/inbound/amqp/{name}", Admin),
    ep("GET", "/v1/inbound/amqp/{name}/stats", Viewer),
    ep("GET", "/v1/outgoing/mqtt", Viewer),
    ep("GET", "/v1/outgoing/mqtt/{name}", Viewer),
    ep("PUT", "/v1/outgoing/mqtt/{name}", Admin),
    ep("DELETE", "/v1/outgoing/mqtt/{name}", Admin),
    ep("POST", "/v1/outgoing/mqtt/{name}/ping", Deployer),
    ep("GET", "/v1/outgoing/mqtt/{name}/stats", Viewer),
    ep("GET", "/v1/inbound/mqtt", Viewer),
    ep("GET", "/v1/inbound/mqtt/{name}", Viewer),
    ep("PUT", "/v1/inbound/mqtt/{name}", Admin),
    ep("DELETE", "/v1/inbound/mqtt/{name}", Admin),
    ep("GET", "/v1/inbound/mqtt/{name}/stats", Viewer),
    ep("GET", "/v1/outgoing/amqp", Viewer),
    ep("GET", "/v1/outgoing/amqp/{name}", Viewer),
    ep("PUT", "/v1/outgoing/amqp/{name}", Admin),
    ep("DELETE", "/v1/outgoing/amqp/{name}", Admin),
    ep("POST", "/v1/outgoing/amqp/{name}/ping", Deployer),
    ep("GET", "/v1/outgoing/amqp/{name}/stats", Viewer),
    ep("GET", "/v1/outgoing/redis", Viewer),
    ep("GET", "/v1/outgoing/redis/{name}", Viewer),
    ep("PUT", "/v1/outgoing/redis/{name}", Admin),
    ep("DELETE", "/v1/outgoing/redis/{name}", Admin),
    ep("POST", "/v1/outgoing/redis/{name}/ping", Deployer),
    ep("GET", "/v1/outgoing/redis/{name}/stats", Viewer),
    // Pub/sub: definitions and figures are a viewer's; a queue's and the dead letters'
    // messages are the applications' data (a deployer's, as a cache's entries are); a
    // requeue or a test publish is an action like a job's run (deployer); a purge destroys
    // messages (admin, as a cache's clear); definition changes are an admin's. A topic's
    // name is the rest of the path (`{name...}`: one or more segments).
    ep("GET", "/v1/pubsub/topics", Viewer),
    ep("GET", "/v1/pubsub/topics/{name...}", Viewer),
    ep("PUT", "/v1/pubsub/topics/{name...}", Admin),
    ep("DELETE", "/v1/pubsub/topics/{name...}", Admin),
    ep("GET", "/v1/pubsub/subs", Viewer),
    ep("GET", "/v1/pubsub/subs/{key}", Viewer),
    ep("PUT", "/v1/pubsub/subs/{key}", Admin),
    ep("DELETE", "/v1/pubsub/subs/{key}", Admin),
    ep("GET", "/v1/pubsub/subs/{key}/queue", Deployer),
    ep("GET", "/v1/pubsub/subs/{key}/dead", Deployer),
    ep("POST", "/v1/pubsub/subs/{key}/requeue", Deployer),
    ep("POST", "/v1/pubsub/subs/{key}/purge", Admin),
    ep("GET", "/v1/pubsub/endpoints", Viewer),
    ep("GET", "/v1/pubsub/endpoints/{name}", Viewer),
    ep("PUT", "/v1/pubsub/endpoints/{name}", Admin),
    ep("DELETE", "/v1/pubsub/endpoints/{name}", Admin),
    ep("POST", "/v1/pubsub/publish/{name...}", Deployer),
    // User config (operator settings services read): not secret, changed as the other
    // config objects are.
    ep("GET", "/v1/user-config", Viewer),
    ep("GET", "/v1/user-config/{name}", Viewer),
    ep("PUT", "/v1/user-config/{name}", Admin),
    ep("DELETE", "/v1/user-config/{name}", Admin),
    // Export carries sealed secret values and credential hashes; import changes anything.
    ep("GET", "/v1/config", Deployer),
    ep("POST", "/v1/config", Admin),
    // API tokens.
    ep("GET", "/v1/tokens", Admin),
    ep("POST", "/v1/tokens", Admin),
    ep("DELETE", "/v1/tokens/{name}", Admin),
];

/// Whether `path`'s segments (split as `route` splits them) match `pattern`'s; a last
/// pattern segment `{…...}` matches one or more segments (a topic's name).
fn matches(pattern: &str, segments: &[&str]) -> bool {
    let mut pat = pattern.trim_matches('/').split('/');
    let mut seg = segments.iter();
    loop {
        match (pat.next(), seg.next()) {
            (None, None) => return true,
            (Some(p), Some(_)) if p.ends_with("...}") => return true,
            (Some(p), Some(s)) if p.starts_with('{') || p == *s => {}
            _ => return false,
        }
    }
}

/// The least role that may call `method` `path`: its row of [`ENDPOINTS`], else `admin`.
pub fn required_role(method: &Method, path: &str) -> Role {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    ENDPOINTS
        .iter()
        .find(|e| e.method == method.as_str() && matches(e.path, &segments))
        .map_or(Role::Admin, |e| e.role)
}

/// Whether `who` may call `method` `path`, or the 403 naming the role it needs.
pub fn authorize(who: &Identity, method: &Method, path: &str) -> Result<(), Refused> {
    let needed = required_role(method, path);
    if who.role.allows(needed) {
        return Ok(());
    }
    Err(Refused::new(
        StatusCode::FORBIDDEN,
        format!(
            "{method} {path} needs role {needed}; token '{}' has role {}",
            who.name, who.role
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str) -> Role {
        required_role(&Method::GET, path)
    }

    #[test]
    fn roles_are_ordered_and_named() {
        assert!(Role::Admin.allows(Role::Deployer) && Role::Admin.allows(Role::Viewer));
        assert!(Role::Deployer.allows(Role::Viewer) && Role::Deployer.allows(Role::Deployer));
        assert!(!Role::Deployer.allows(Role::Admin) && !Role::Viewer.allows(Role::Deployer));
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
        assert_eq!(Role::parse("root"), None);
        assert_eq!(Role::parse("Admin"), None);
    }

    #[test]
    fn every_endpoint_is_classified_once_and_well_formed() {
        for (i, e) in ENDPOINTS.iter().enumerate() {
            assert!(
                matches!(e.method, "GET" | "POST" | "PUT" | "DELETE"),
                "{e:?}"
            );
            assert!(
                e.path.starts_with("/v1/") && !e.path.ends_with('/'),
                "{e:?}"
            );
            for s in e.path.trim_matches('/').split('/') {
                assert!(
                    !s.is_empty() && (!s.contains('{') || (s.starts_with('{') && s.ends_with('}'))),
                    "{e:?}"
                );
            }
            // No row is shadowed by an earlier one (the first match wins).
            let concrete = e
                .path
                .replace("{name...}", "x/y")
                .replace("{name}", "x")
                .replace("{key}", "k");
            let method = Method::from_bytes(e.method.as_bytes()).unwrap();
            assert_eq!(
                required_role(&method, &concrete),
                e.role,
                "row {i} {e:?} is shadowed"
            );
        }
    }

    #[test]
    fn connector_connections_and_channels_are_classified_like_rest_and_sql() {
        for kind in [
            "/v1/outgoing/mqtt",
            "/v1/inbound/mqtt",
            "/v1/outgoing/amqp",
            "/v1/inbound/amqp",
            "/v1/outgoing/redis",
        ] {
            let get = |p: &str| required_role(&Method::GET, &format!("{kind}{p}"));
            assert_eq!(get(""), Role::Viewer, "{kind}");
            assert_eq!(get("/x"), Role::Viewer, "{kind}");
            assert_eq!(get("/x/stats"), Role::Viewer, "{kind}");
            let one = format!("{kind}/x");
            assert_eq!(required_role(&Method::PUT, &one), Role::Admin);
            assert_eq!(required_role(&Method::DELETE, &one), Role::Admin);
        }
        for kind in ["mqtt", "amqp", "redis"] {
            assert_eq!(
                required_role(&Method::POST, &format!("/v1/outgoing/{kind}/x/ping")),
                Role::Deployer
            );
        }
    }

    #[test]
    fn reads_are_viewers_except_secret_material() {
        for p in [
            "/v1/info",
            "/v1/cluster",
            "/v1/openapi",
            "/v1/audit",
            "/v1/services",
            "/v1/services/stats",
            "/v1/services/demo.echo/stats",
            "/v1/modules",
            "/v1/modules/crm",
            "/v1/channels",
            "/v1/channels/%2Fapi%2Fx",
            "/v1/secrets",
            "/v1/security",
            "/v1/security/basic1",
            "/v1/caches",
            "/v1/caches/default",
            "/v1/jobs",
            "/v1/jobs/nightly",
            "/v1/jobs/nightly/runs",
            "/v1/scheduler",
            "/v1/user-config",
            "/v1/user-config/app.settings",
        ] {
            assert_eq!(get(p), Role::Viewer, "{p}");
        }
        // The export (sealed values) and cache contents: a deployer's.
        assert_eq!(get("/v1/config"), Role::Deployer);
        assert_eq!(get("/v1/caches/default/keys"), Role::Deployer);
        assert_eq!(get("/v1/caches/default/keys/k1"), Role::Deployer);
        // Tokens: the admin's, reads included.
        assert_eq!(get("/v1/tokens"), Role::Admin);
    }

    #[test]
    fn deployers_deploy_roll_back_undeploy_and_invoke_only() {
        let post = |p: &str| required_role(&Method::POST, p);
        let delete = |p: &str| required_role(&Method::DELETE, p);
        assert_eq!(post("/v1/modules"), Role::Deployer);
        assert_eq!(post("/v1/modules/crm/rollback"), Role::Deployer);
        assert_eq!(delete("/v1/modules/crm"), Role::Deployer);
        assert_eq!(post("/v1/invoke/demo.echo"), Role::Deployer);
        assert_eq!(post("/v1/jobs/nightly/execute"), Role::Deployer);
        for (m, p) in [
            (Method::POST, "/v1/channels"),
            (Method::PUT, "/v1/channels/c"),
            (Method::DELETE, "/v1/channels/c"),
            (Method::PUT, "/v1/secrets/s"),
            (Method::DELETE, "/v1/secrets/s"),
            (Method::POST, "/v1/security"),
            (Method::PUT, "/v1/caches/c"),
            (Method::PUT, "/v1/caches/c/keys/k"),
            (Method::POST, "/v1/caches/c/clear"),
            (Method::PUT, "/v1/jobs/j"),
            (Method::POST, "/v1/jobs/j/enable"),
            (Method::POST, "/v1/config"),
            (Method::POST, "/v1/tokens"),
            (Method::DELETE, "/v1/tokens/ci"),
        ] {
            assert_eq!(required_role(&m, p), Role::Admin, "{m} {p}");
        }
    }

    #[test]
    fn pubsub_reads_are_viewers_data_deployers_changes_admins() {
        let post = |p: &str| required_role(&Method::POST, p);
        assert_eq!(get("/v1/pubsub/topics"), Role::Viewer);
        assert_eq!(get("/v1/pubsub/topics/orders"), Role::Viewer);
        assert_eq!(get("/v1/pubsub/topics/orders/eu/new"), Role::Viewer);
        assert_eq!(get("/v1/pubsub/subs/sk.1"), Role::Viewer);
        assert_eq!(get("/v1/pubsub/endpoints/crm"), Role::Viewer);
        assert_eq!(get("/v1/pubsub/subs/sk.1/queue"), Role::Deployer);
        assert_eq!(get("/v1/pubsub/subs/sk.1/dead"), Role::Deployer);
        assert_eq!(post("/v1/pubsub/subs/sk.1/requeue"), Role::Deployer);
        assert_eq!(post("/v1/pubsub/publish/orders/new"), Role::Deployer);
        assert_eq!(post("/v1/pubsub/subs/sk.1/purge"), Role::Admin);
        for (m, p) in [
            (Method::PUT, "/v1/pubsub/topics/orders/new"),
            (Method::DELETE, "/v1/pubsub/topics/orders"),
            (Method::PUT, "/v1/pubsub/subs/sk.1"),
            (Method::DELETE, "/v1/pubsub/subs/sk.1"),
            (Method::PUT, "/v1/pubsub/endpoints/crm"),
            // No topic named: not the table's (admin, and `route` answers 404).
            (Method::POST, "/v1/pubsub/publish"),
            (Method::GET, "/v1/pubsub/subs/sk.1/queue/x"),
        ] {
            assert_eq!(required_role(&m, p), Role::Admin, "{m} {p}");
        }
    }

    #[test]
    fn anything_not_in_the_table_needs_admin() {
        for (m, p) in [
            (Method::GET, "/v1/nothing"),
            (Method::GET, "/v1/modules/crm/extra"),
            (Method::PATCH, "/v1/channels/c"),
            (Method::HEAD, "/v1/info"),
            (Method::GET, "/v1"),
            (Method::GET, "/"),
            (Method::GET, "/v1/caches/c/keys/a/b"),
            (Method::POST, "/v1/info"),
            (Method::GET, "/v2/info"),
        ] {
            assert_eq!(required_role(&m, p), Role::Admin, "{m} {p}");
        }
        // Trailing slashes are split away as `route` does.
        assert_eq!(get("/v1/info/"), Role::Viewer);
    }

    #[test]
    fn a_refusal_names_the_role_needed_and_the_token_s_role() {
        let who = Identity {
            name: "ci".into(),
            role: Role::Viewer,
        };
        let r = match authorize(&who, &Method::POST, "/v1/modules") {
            Err(refused) => refused.answer(),
            Ok(()) => panic!("a viewer may not deploy"),
        };
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let body =
            futures_util::FutureExt::now_or_never(http_body_util::BodyExt::collect(r.into_body()))
                .unwrap()
                .unwrap()
                .to_bytes();
        let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            doc["error"],
            "POST /v1/modules needs role deployer; token 'ci' has role viewer"
        );
        assert!(authorize(&who, &Method::GET, "/v1/modules").is_ok());
    }

    #[test]
    fn a_named_token_records_its_own_name_the_root_what_it_claims() {
        let ci = Identity {
            name: "ci".into(),
            role: Role::Deployer,
        };
        assert_eq!(ci.recorded_as(Some("root"), "admin-api"), "ci");
        assert_eq!(ci.recorded_as(None, "admin-api"), "ci");
        let root = Identity {
            name: ROOT.into(),
            role: Role::Admin,
        };
        assert_eq!(root.recorded_as(Some("alice"), "admin-api"), "alice");
        assert_eq!(root.recorded_as(None, "admin-api"), "admin-api");
    }

    fn ident(name: &str) -> Identity {
        Identity {
            name: name.into(),
            role: Role::Viewer,
        }
    }

    #[test]
    fn copy_a_lookup_that_read_the_store_before_a_local_revoke_does_not_restore_it() {
        let k = KnownTokens::default();
        let g = k.generation();
        k.found("h1", Some(ident("ci")), g);
        assert_eq!(k.get("h1"), Some(ident("ci")));
        // A lookup reads the store (found), then the token is revoked here, then the lookup
        // lands: the revoked token stays out.
        let before = k.generation();
        k.forget_name("ci");
        assert_eq!(k.get("h1"), None);
        k.found("h1", Some(ident("ci")), before);
        assert_eq!(k.get("h1"), None);
        // So does a list read before the revoke.
        assert_eq!(k.replace([("h1".into(), ident("ci"))], before), None);
        assert_eq!(k.get("h1"), None);
        // Not found is always applied; a lookup that started after the revoke adds.
        let now = k.generation();
        k.found("h2", Some(ident("ops")), now);
        assert_eq!(k.get("h2"), Some(ident("ops")));
        k.found("h2", None, before);
        assert_eq!(k.get("h2"), None);
    }

    #[test]
    fn copy_is_replaced_whole_and_says_what_was_dropped() {
        let k = KnownTokens::default();
        let g = k.generation();
        assert_eq!(
            k.replace([("h1".into(), ident("a")), ("h2".into(), ident("b"))], g),
            Some(vec![])
        );
        // Revoked through another server: gone from the copy at the next replace.
        assert_eq!(
            k.replace([("h2".into(), ident("b"))], g),
            Some(vec!["a".to_owned()])
        );
        assert_eq!(k.get("h1"), None);
        assert_eq!(k.get("h2"), Some(ident("b")));
    }

    #[test]
    fn last_use_is_claimed_once_per_token_per_interval() {
        let k = KnownTokens::default();
        let t0 = Instant::now();
        assert!(k.claim_write("h1", t0));
        // Every other request before the interval is over: no second write.
        assert!(!k.claim_write("h1", t0));
        assert!(!k.claim_write("h1", t0 + LAST_USED_EVERY - Duration::from_millis(1)));
        assert!(k.claim_write("h2", t0), "per token");
        assert!(k.claim_write("h1", t0 + LAST_USED_EVERY));
        assert!(!k.claim_write("h1", t0 + LAST_USED_EVERY));
    }

    #[test]
    fn tokens_are_prefixed_256_bit_and_hashed_with_sha256() {
        let t = new_token();
        assert!(t.starts_with(TOKEN_PREFIX));
        assert_eq!(t.len(), TOKEN_PREFIX.len() + 64);
        assert_ne!(t, new_token());
        assert_eq!(
            token_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
