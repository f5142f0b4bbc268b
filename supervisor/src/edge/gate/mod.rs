//! What stands between a REST channel and its service: the channel's IP allow list, its rate
//! limit, its security definition (HTTP Basic, API key or JWT bearer) and that definition's
//! rate limit — all checked here, in Rust, before the request body is read or a worker is
//! asked for anything. A rejected request never reaches a service.
//!
//! Security definitions are store objects (`model::security::SecurityDef`); their secret material (Basic's
//! argon2 hash, the API key, a JWT HMAC secret) is sealed with the server's secrets key like
//! any other secret. [`Gate`] is the compiled form the request path reads: built from the
//! channels and the definitions whenever either changes, swapped whole (as the router is),
//! and carrying the rate-limit buckets of unchanged limits over so a config change does not
//! refill them.
//!
//! Rate limits are token buckets per server: a limit of `requests` per `per_s` seconds
//! (bursts up to `burst`, default `requests`) holds exactly on each server; a cluster of N
//! servers behind a balancer admits up to N times that in total (docs/SECURITY.md).

//!
//! One file per mechanism: [`basic`] (argon2), [`apikey`], [`jwt`] (keys, JWKS, the token
//! cache), [`rate`] (token buckets), [`allow`] (allow lists); this file holds the compiled
//! [`Gate`], a definition's [`Verifier`], and what the request path sees ([`Caller`],
//! [`Rejection`]). The gate reads no store and no request body; it never calls a worker.

use ipnet::IpNet;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::model::channel::{Channel, RateLimitError};
use crate::model::security::{
    SecurityDef, SecurityDefError, SecurityType, parse_input, seal_name, takes_secret,
};
use crate::secrets::{Key, SecretError};

pub mod allow;
pub mod apikey;
pub mod basic;
pub mod jwt;
pub mod rate;

pub use allow::{AllowError, parse_allow};
pub use basic::hash_password;
use rate::Bucket;

/// Why a security definition, or a channel's checks, cannot be compiled; the text names the
/// definition or channel and the field.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error(transparent)]
    Input(#[from] SecurityDefError),
    #[error("basic definition {0} needs a password")]
    NeedsPassword(String),
    #[error("apikey definition {0} needs a key")]
    NeedsKey(String),
    #[error("jwt definition {0} needs a secret for HS*")]
    NeedsSecret(String),
    #[error("security definition {name}: {source}")]
    Sealed { name: String, source: SecretError },
    #[error("{field} does not apply to a {kind} definition ({name})")]
    NotFor {
        field: &'static str,
        kind: &'static str,
        name: String,
    },
    #[error(transparent)]
    RateLimit(#[from] RateLimitError),
    #[error("basic definition {0} needs a username without ':'")]
    Username(String),
    #[error("basic definition {name}: the stored hash: {error}")]
    StoredHash {
        name: String,
        error: argon2::password_hash::Error,
    },
    #[error("realm of {0} must not contain quotes or backslashes")]
    Realm(String),
    #[error("no randomness for a salt: {0}")]
    Salt(getrandom::Error),
    #[error("{0}")]
    SaltEncoding(argon2::password_hash::Error),
    #[error("cannot hash the password: {0}")]
    Hash(argon2::password_hash::Error),
    #[error("header {header:?} of {name} is not a header name")]
    Header { header: String, name: String },
    #[error("jwt definition {0} needs algorithms, e.g. [\"HS256\"]")]
    NoAlgorithms(String),
    #[error(
        "algorithm {alg:?} of {name} is not one of HS256/384/512, RS256/384/512, PS256/384/512, ES256/384, EdDSA"
    )]
    Algorithm { alg: String, name: String },
    #[error("algorithms of {0} mix families; one definition takes HS*, RS*/PS*, ES* or EdDSA only")]
    MixedFamilies(String),
    #[error("jwt definition {0} uses public keys: it takes public_key or jwks_file, not a secret")]
    SecretForPublicKeys(String),
    #[error("public_key of {name}: {source}")]
    PublicKey {
        name: String,
        source: jsonwebtoken::errors::Error,
    },
    #[error("jwt definition {0} needs exactly one of public_key (PEM) or jwks_file")]
    KeySource(String),
    #[error("leeway_s of {0} is at most {max} (one day)", max = jwt::MAX_LEEWAY_S)]
    Leeway(String),
    #[error("jwks_file {path} of {name}: {source}")]
    Jwks {
        path: String,
        name: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("jwks_file {path} of {name} holds a symmetric (oct) key; it takes public keys only")]
    JwksSymmetric { path: String, name: String },
    #[error("jwks_file {path} of {name} has no key for the definition's algorithms")]
    JwksEmpty { path: String, name: String },
    #[error("channel {channel}: {source}")]
    Allow { channel: String, source: AllowError },
    #[error("channel {channel}: {source}")]
    ChannelRate {
        channel: String,
        source: RateLimitError,
    },
    #[error("channel {channel} names security definition {security}, which does not exist")]
    UnknownSecurity { channel: String, security: String },
}

/// Builds a definition from what an operator sends: the stored fields plus the plaintext
/// (`password` for basic, `key` for apikey, `secret` for jwt HS*), hashed or sealed here.
/// `previous` is the stored definition an update replaces: its secret is kept when the
/// update carries none. Returns the definition, checked by compiling it.
pub fn from_input(
    input: serde_json::Value,
    name: Option<&str>,
    previous: Option<&SecurityDef>,
    key: &Key,
) -> Result<SecurityDef, GateError> {
    let parsed = parse_input(input, name)?;
    let mut def = parsed.def;
    let given = match def.kind {
        SecurityType::Basic => parsed.plain.map(|p| hash_password(&p)).transpose()?,
        SecurityType::Apikey | SecurityType::Jwt => parsed.plain,
    };
    if let Some(material) = given {
        def.sealed = Some(key.seal(&seal_name(&def.name), &material));
    } else if def.sealed.is_none()
        && takes_secret(&def)
        && let Some(prev) = previous.filter(|p| p.kind == def.kind)
    {
        def.sealed = prev.sealed.clone();
    }
    Verifier::compile(&def, key)?;
    Ok(def)
}

/// Whether `new` (built from an import entry whose plaintext, if it had one, is `plain`)
/// holds the same secret as the stored `old`.
pub fn same_secret(old: &SecurityDef, new: &SecurityDef, plain: Option<&str>, key: &Key) -> bool {
    let open = |d: &SecurityDef| {
        d.sealed
            .as_deref()
            .and_then(|s| key.open(&seal_name(&d.name), s).ok())
            .map(|p| p.expose().to_owned())
    };
    let Some(old_material) = open(old) else {
        return new.sealed.is_none();
    };
    match (old.kind, plain) {
        (SecurityType::Basic, Some(p)) => basic::password_matches(&old_material, p),
        (_, Some(p)) => p == old_material,
        (_, None) => open(new).as_deref() == Some(old_material.as_str()),
    }
}

/// Who a request authenticated as; what the service sees as `self.channel.security`.
#[derive(Debug, Clone, Serialize)]
pub struct Caller {
    pub name: Arc<str>,
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

/// Why a request was turned away: the HTTP status, a reason for the JSON body, and the
/// `WWW-Authenticate` challenge or `Retry-After` where they apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    Unauthorized {
        reason: String,
        challenge: Option<String>,
    },
    Forbidden(String),
    TooMany {
        reason: String,
        retry_after_s: u64,
    },
}

fn too_many(what: &str, wait: Duration) -> Rejection {
    Rejection::TooMany {
        reason: format!("rate limit of {what} exceeded"),
        retry_after_s: wait.as_secs_f64().ceil().max(1.0) as u64,
    }
}

/// A definition's mechanism, compiled.
enum Check {
    Basic(basic::Basic),
    Apikey(apikey::ApiKey),
    Jwt(jwt::Jwt),
}

/// A compiled security definition.
pub struct Verifier {
    name: Arc<str>,
    check: Check,
    bucket: Option<Bucket>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("name", &self.name)
            .finish()
    }
}

/// The most credentials (Basic) or tokens (JWT) a verifier remembers as verified.
const VERIFIED_MAX: usize = 4096;

fn digest(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

/// An error when `field` is `present` on a definition whose type does not take it.
fn not_for(def: &SecurityDef, field: &'static str, present: bool) -> Result<(), GateError> {
    if present {
        Err(GateError::NotFor {
            field,
            kind: def.kind.as_str(),
            name: def.name.clone(),
        })
    } else {
        Ok(())
    }
}

impl Verifier {
    /// Compiles a definition, opening its sealed material with `key`; every way the
    /// definition could not work is an error naming the field.
    pub fn compile(def: &SecurityDef, key: &Key) -> Result<Verifier, GateError> {
        let n = &def.name;
        let secret = || -> Result<String, GateError> {
            let sealed = def.sealed.as_deref().ok_or_else(|| match def.kind {
                SecurityType::Basic => GateError::NeedsPassword(n.clone()),
                SecurityType::Apikey => GateError::NeedsKey(n.clone()),
                SecurityType::Jwt => GateError::NeedsSecret(n.clone()),
            })?;
            key.open(&seal_name(n), sealed)
                .map(|p| p.expose().to_owned())
                .map_err(|source| GateError::Sealed {
                    name: n.clone(),
                    source,
                })
        };
        if def.kind != SecurityType::Basic {
            not_for(def, "username", def.username.is_some())?;
            not_for(def, "realm", def.realm.is_some())?;
        }
        if def.kind != SecurityType::Apikey {
            not_for(def, "header", def.header.is_some())?;
        }
        if def.kind != SecurityType::Jwt {
            not_for(def, "algorithms", !def.algorithms.is_empty())?;
            not_for(def, "issuer", def.issuer.is_some())?;
            not_for(def, "audience", def.audience.is_some())?;
            not_for(def, "public_key", def.public_key.is_some())?;
            not_for(def, "jwks_file", def.jwks_file.is_some())?;
            not_for(def, "leeway_s", def.leeway_s.is_some())?;
        }
        if let Some(l) = &def.rate_limit {
            l.validate()?;
        }
        let check = match def.kind {
            SecurityType::Basic => Check::Basic(basic::Basic::compile(def, secret)?),
            SecurityType::Apikey => Check::Apikey(apikey::ApiKey::compile(def, secret)?),
            SecurityType::Jwt => Check::Jwt(jwt::Jwt::compile(def, secret)?),
        };
        Ok(Verifier {
            name: Arc::from(n.as_str()),
            check,
            bucket: def.rate_limit.clone().map(Bucket::new),
        })
    }

    /// Checks a request's headers. Basic's first sight of a credential verifies the argon2
    /// hash on a blocking thread; later requests with it cost a SHA-256.
    pub async fn check(&self, headers: &hyper::HeaderMap) -> Result<Caller, Rejection> {
        let (kind, username, subject) = match &self.check {
            Check::Basic(b) => ("basic", Some(b.check(headers).await?), None),
            Check::Apikey(a) => {
                a.check(headers)?;
                ("apikey", None, None)
            }
            Check::Jwt(j) => ("jwt", None, j.check(headers)?),
        };
        Ok(Caller {
            name: self.name.clone(),
            kind,
            username,
            subject,
        })
    }
}

impl Verifier {
    /// Checks a request's headers, then the definition's own rate limit (429).
    pub async fn admit(&self, headers: &hyper::HeaderMap) -> Result<Caller, Rejection> {
        let caller = self.check(headers).await?;
        if let Some(b) = &self.bucket {
            b.take(Instant::now())
                .map_err(|w| too_many(&format!("security definition {}", self.name), w))?;
        }
        Ok(caller)
    }
}

impl Verifier {
    /// Whether a request's headers carry a credential of this definition's kind (checked
    /// or not).
    pub fn carries_credential(&self, headers: &hyper::HeaderMap) -> bool {
        match &self.check {
            Check::Basic(_) | Check::Jwt(_) => headers.contains_key(hyper::header::AUTHORIZATION),
            Check::Apikey(a) => headers.contains_key(a.header()),
        }
    }

    /// Checks a credential a WebSocket client sent in a message after the upgrade, exactly
    /// as if its upgrade request had carried it (the same checks, cache and rate limit):
    /// Basic takes a user name and password; JWT and API key a single secret (the password
    /// of a pair, as Zato's `create-session` sends a JWT in `secret`).
    pub async fn admit_credential(
        &self,
        credential: crate::wsx::auth::Credential,
    ) -> Result<Caller, Rejection> {
        use crate::wsx::auth::Credential;
        use base64::Engine as _;
        let refused = |reason: &str| Rejection::Unauthorized {
            reason: reason.into(),
            challenge: None,
        };
        let (name, value) = match (&self.check, credential) {
            (Check::Basic(_), Credential::Basic { username, password }) => {
                if username.contains(':') {
                    return Err(refused("a user name cannot contain ':'"));
                }
                let pair = base64::engine::general_purpose::STANDARD
                    .encode(format!("{username}:{password}"));
                (hyper::header::AUTHORIZATION, format!("Basic {pair}"))
            }
            (Check::Basic(_), Credential::Secret(_)) => {
                return Err(refused("this definition takes a user name and password"));
            }
            (Check::Jwt(_), Credential::Basic { password: s, .. } | Credential::Secret(s)) => {
                (hyper::header::AUTHORIZATION, format!("Bearer {s}"))
            }
            (Check::Apikey(a), Credential::Basic { password: s, .. } | Credential::Secret(s)) => {
                (a.header().clone(), s)
            }
        };
        let value = hyper::header::HeaderValue::from_str(&value)
            .map_err(|_| refused("the credential holds characters a header cannot"))?;
        let mut headers = hyper::HeaderMap::new();
        headers.insert(name, value);
        self.admit(&headers).await
    }
}

/// A channel's compiled gate.
#[derive(Debug, Default)]
pub struct ChannelGate {
    allow: Vec<IpNet>,
    bucket: Option<Bucket>,
    security: Option<Arc<Verifier>>,
}

impl ChannelGate {
    /// True when nothing is to be checked (the common case costs one branch).
    pub fn is_open(&self) -> bool {
        self.allow.is_empty() && self.bucket.is_none() && self.security.is_none()
    }

    /// Runs the checks in order: allow list (403), the channel's rate limit (429, before
    /// any password hashing), the security definition (401), its rate limit (429).
    pub async fn admit(
        &self,
        client: IpAddr,
        headers: &hyper::HeaderMap,
        channel: &str,
    ) -> Result<Option<Caller>, Rejection> {
        match self.admit_later(client, channel)? {
            Some(v) => v.admit(headers).await.map(Some),
            None => Ok(None),
        }
    }

    /// The channel's allow list and rate limit only, for a WebSocket client that will
    /// authenticate after the upgrade; the security definition's check, to be made then.
    pub fn admit_later(
        &self,
        client: IpAddr,
        channel: &str,
    ) -> Result<Option<Arc<Verifier>>, Rejection> {
        if !self.allow.is_empty() && !self.allow.iter().any(|n| n.contains(&client)) {
            return Err(Rejection::Forbidden(format!(
                "{client} is not allowed to call channel {channel}"
            )));
        }
        if let Some(b) = &self.bucket {
            b.take(Instant::now())
                .map_err(|w| too_many(&format!("channel {channel}"), w))?;
        }
        Ok(self.security.clone())
    }

    /// The security definition's check, compiled (none: an open channel).
    pub fn verifier(&self) -> Option<&Arc<Verifier>> {
        self.security.as_ref()
    }
}

/// Every channel's gate, by channel name (url_path for unnamed server.toml channels). Lives
/// in the [`crate::edge::router::Router`] it was built with, so a request sees the routes and the
/// checks of one config version.
#[derive(Debug, Default)]
pub struct Gate {
    /// By the address of the routing table's `Arc<Channel>`: the very channel a lookup
    /// found, never another one that shares its name or path (server.toml may hold two
    /// unnamed channels of one path with different methods).
    channels: HashMap<usize, Arc<ChannelGate>>,
    /// Bucket state by channel identity (name or path, and methods), carried over when the
    /// table is rebuilt.
    carried: HashMap<(String, Vec<String>), Arc<ChannelGate>>,
    verifiers: HashMap<String, (SecurityDef, Arc<Verifier>)>,
}

fn channel_key(c: &Channel) -> &str {
    c.name.as_deref().unwrap_or(&c.url_path)
}

impl Gate {
    /// Compiles the gate for `channels` (the routing table's own `Arc`s) with `defs`. Errors
    /// name the channel or definition. `previous`'s rate-limit buckets keep their state where
    /// the limit did not change, and its compiled definitions (with their caches) are reused
    /// where the definition did not change — except those reading a JWKS file, which are
    /// always read again (a `PUT` of the same definition is how keys are rotated).
    pub fn build(
        channels: &[Arc<Channel>],
        defs: &[SecurityDef],
        key: &Key,
        previous: Option<&Gate>,
    ) -> Result<Gate, GateError> {
        let mut verifiers = HashMap::new();
        for d in defs {
            let old = previous.and_then(|p| p.verifiers.get(&d.name));
            let reuse = old
                .filter(|(old, _)| old == d && d.jwks_file.is_none())
                .map(|(_, v)| v.clone());
            let v = match reuse {
                Some(v) => v,
                None => {
                    let v = Verifier::compile(d, key)?;
                    if let (Some((_, old)), Some(b)) = (old, &v.bucket)
                        && let Some(ob) = &old.bucket
                    {
                        b.carry_from(ob);
                    }
                    Arc::new(v)
                }
            };
            verifiers.insert(d.name.clone(), (d.clone(), v));
        }
        let mut gates = HashMap::new();
        let mut carried = HashMap::new();
        for c in channels {
            let name = channel_key(c);
            let allow = c
                .allow_from
                .iter()
                .map(|e| {
                    parse_allow(e).map_err(|source| GateError::Allow {
                        channel: name.to_owned(),
                        source,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let security = match &c.security {
                None => None,
                Some(s) => Some(verifiers.get(s).map(|(_, v)| v.clone()).ok_or_else(|| {
                    GateError::UnknownSecurity {
                        channel: name.to_owned(),
                        security: s.clone(),
                    }
                })?),
            };
            if let Some(l) = &c.rate_limit {
                l.validate().map_err(|source| GateError::ChannelRate {
                    channel: name.to_owned(),
                    source,
                })?;
            }
            let identity = (name.to_owned(), c.methods.clone());
            let prev = previous.and_then(|p| p.carried.get(&identity));
            let bucket = c.rate_limit.as_ref().map(|l| {
                let b = Bucket::new(l.clone());
                // Same limit: carry the state over (a config change must not hand out a
                // fresh burst).
                if let Some(old) = prev.and_then(|p| p.bucket.as_ref()) {
                    b.carry_from(old);
                }
                b
            });
            let g = Arc::new(ChannelGate {
                allow,
                bucket,
                security,
            });
            gates.insert(Arc::as_ptr(c) as usize, g.clone());
            carried.insert(identity, g);
        }
        Ok(Gate {
            channels: gates,
            carried,
            verifiers,
        })
    }

    /// The definitions this gate was compiled from, by name.
    pub fn definitions(&self) -> Vec<SecurityDef> {
        let mut d: Vec<SecurityDef> = self.verifiers.values().map(|(d, _)| d.clone()).collect();
        d.sort_by(|a, b| a.name.cmp(&b.name));
        d
    }

    /// A compiled definition and what it was compiled from, by name (the pub/sub API tries
    /// those of its endpoints when its channel names none).
    pub fn verifier(&self, name: &str) -> Option<(&SecurityDef, &Arc<Verifier>)> {
        self.verifiers.get(name).map(|(d, v)| (d, v))
    }

    /// The gate of a channel the routing table this gate belongs to returned.
    pub fn for_channel(&self, c: &Arc<Channel>) -> Option<&Arc<ChannelGate>> {
        self.channels.get(&(Arc::as_ptr(c) as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::security::public_json;
    use base64::Engine as _;

    pub(super) fn key() -> Key {
        let dir = std::env::temp_dir().join(format!("oxbus-gate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("k-{:?}", std::thread::current().id()));
        let _ = std::fs::remove_file(&path);
        Key::create(&path).unwrap()
    }

    #[test]
    fn definitions_refuse_what_cannot_work() {
        let k = key();
        let def = |v: serde_json::Value| from_input(v, None, None, &k);
        assert!(def(serde_json::json!({"name": "b", "type": "basic", "username": "u"})).is_err());
        assert!(
            def(
                serde_json::json!({"name": "b", "type": "basic", "username": "u", "password": "p"})
            )
            .is_ok()
        );
        assert!(
            def(serde_json::json!({"name": "b", "type": "basic", "username": "u", "key": "p"}))
                .is_err()
        );
        assert!(def(serde_json::json!({"name": "a", "type": "apikey", "key": "k", "algorithms": ["HS256"]})).is_err());
        assert!(def(serde_json::json!({"name": "j", "type": "jwt", "algorithms": ["HS256", "RS256"], "secret": "s"})).is_err());
        assert!(def(serde_json::json!({"name": "j", "type": "jwt", "algorithms": ["none"], "secret": "s"})).is_err());
        assert!(def(serde_json::json!({"name": "j", "type": "jwt", "algorithms": ["RS256"], "secret": "s"})).is_err());
        assert!(def(serde_json::json!({"name": "j", "type": "jwt", "algorithms": ["HS256"], "secret": "s"})).is_ok());
        assert!(
            def(serde_json::json!({"name": "bad name", "type": "apikey", "key": "k"})).is_err()
        );
        assert!(def(serde_json::json!({"name": "j", "type": "jwt", "algorithms": ["HS256"], "secret": "s", "leeway_s": 86401})).is_err());
        // HS256 → ES256 by PUT: the old HMAC secret is not carried into a public-key definition.
        let hs = def(
            serde_json::json!({"name": "j", "type": "jwt", "algorithms": ["HS256"], "secret": "s"}),
        )
        .unwrap();
        let pem = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEEVs/o5+uQbTjL3chynL4wXgUg2R9\nq9UU8I5mEovUf86QZ7kOBIjJwqnzD1omageEHWwHdBO6B+dFabmdT9POxg==\n-----END PUBLIC KEY-----\n";
        let es = from_input(
            serde_json::json!({"name": "j", "type": "jwt", "algorithms": ["ES256"], "public_key": pem}),
            None,
            Some(&hs),
            &k,
        );
        assert!(es.as_ref().is_ok_and(|d| d.sealed.is_none()), "{es:?}");
        let stored = def(serde_json::json!({"name": "a", "type": "apikey", "key": "k1"})).unwrap();
        assert!(stored.sealed.as_deref().unwrap().starts_with("oxbus1:"));
        assert!(!serde_json::to_string(&stored).unwrap().contains("k1"));
        assert!(public_json(&stored).get("sealed").is_none());
    }

    #[tokio::test]
    async fn apikey_and_basic_check_headers() {
        let k = key();
        let a = from_input(
            serde_json::json!({"name": "a", "type": "apikey", "header": "X-Key", "key": "k1"}),
            None,
            None,
            &k,
        )
        .unwrap();
        let v = Verifier::compile(&a, &k).unwrap();
        let mut h = hyper::HeaderMap::new();
        assert!(v.check(&h).await.is_err());
        h.insert("x-key", "k2".parse().unwrap());
        assert!(v.check(&h).await.is_err());
        h.insert("x-key", "k1".parse().unwrap());
        assert_eq!(v.check(&h).await.unwrap().kind, "apikey");

        let b = from_input(serde_json::json!({"name": "b", "type": "basic", "username": "ann", "password": "s3cret"}), None, None, &k).unwrap();
        let v = Verifier::compile(&b, &k).unwrap();
        let basic = |u: &str, p: &str| {
            let mut h = hyper::HeaderMap::new();
            let c = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            h.insert(
                hyper::header::AUTHORIZATION,
                format!("Basic {c}").parse().unwrap(),
            );
            h
        };
        match v.check(&basic("ann", "wrong")).await {
            Err(Rejection::Unauthorized {
                challenge: Some(c), ..
            }) => assert!(c.starts_with("Basic realm=")),
            other => panic!("{other:?}"),
        }
        assert!(v.check(&basic("bob", "s3cret")).await.is_err());
        for _ in 0..2 {
            assert_eq!(
                v.check(&basic("ann", "s3cret"))
                    .await
                    .unwrap()
                    .username
                    .as_deref(),
                Some("ann")
            );
        }
    }
}
