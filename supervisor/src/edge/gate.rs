//! What stands between a REST channel and its service: the channel's IP allow list, its rate
//! limit, its security definition (HTTP Basic, API key or JWT bearer) and that definition's
//! rate limit — all checked here, in Rust, before the request body is read or a worker is
//! asked for anything. A rejected request never reaches a service.
//!
//! Security definitions are store objects ([`SecurityDef`]); their secret material (Basic's
//! argon2 hash, the API key, a JWT HMAC secret) is sealed with the server's secrets key like
//! any other secret. [`Gate`] is the compiled form the request path reads: built from the
//! channels and the definitions whenever either changes, swapped whole (as the router is),
//! and carrying the rate-limit buckets of unchanged limits over so a config change does not
//! refill them.
//!
//! Rate limits are token buckets per server: a limit of `requests` per `per_s` seconds
//! (bursts up to `burst`, default `requests`) holds exactly on each server; a cluster of N
//! servers behind a balancer admits up to N times that in total (docs/SECURITY.md).

use base64::Engine as _;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

use crate::config::{Channel, RateLimit};
use crate::secrets::Key;

/// The kinds of security definition.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SecurityType {
    Basic,
    Apikey,
    Jwt,
}

impl SecurityType {
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityType::Basic => "basic",
            SecurityType::Apikey => "apikey",
            SecurityType::Jwt => "jwt",
        }
    }
}

/// The API key header when a definition names none.
pub const DEFAULT_KEY_HEADER: &str = "X-API-Key";

/// A security definition as stored and exported: secret material only sealed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SecurityDef {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: SecurityType,
    /// basic: the one user name this definition accepts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// basic: the realm of the `WWW-Authenticate` challenge (default `oxbus`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
    /// apikey: the request header that carries the key (default `X-API-Key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// jwt: the accepted algorithms, all of one family (HS*, RS*/PS*, or ES*).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub algorithms: Vec<String>,
    /// jwt: required `iss`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// jwt: required `aud` (one of the token's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// jwt RS*/PS*/ES*: the public key, PEM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// jwt RS*/PS*/ES*: a JWKS file (keys chosen by the token's `kid`), instead of `public_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<String>,
    /// jwt: clock skew allowed on `exp`/`nbf`, seconds (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leeway_s: Option<u64>,
    /// A limit for everything this definition lets in, over all its channels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// basic: the password's argon2id hash; apikey: the key; jwt HS*: the shared secret.
    /// Sealed (`oxbus1:…`); never plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<String>,
}

/// What a definition looks like to an operator: everything but the sealed material.
pub fn public_json(def: &SecurityDef) -> serde_json::Value {
    let mut v = serde_json::to_value(def).expect("a definition serialises");
    if let Some(m) = v.as_object_mut() {
        m.remove("sealed");
        m.insert("has_secret".into(), def.sealed.is_some().into());
    }
    v
}

/// The name secret material is sealed under (the associated data of the sealed value).
pub fn seal_name(def_name: &str) -> String {
    format!("security/{def_name}")
}

/// Valid definition names: 1-200 of letters, digits, `._-`.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 200
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(format!(
            "{name:?} is not a valid security definition name (1-200 characters: letters, digits, ._-)"
        ));
    }
    Ok(())
}

/// Builds a definition from what an operator sends: the stored fields plus the plaintext
/// (`password` for basic, `key` for apikey, `secret` for jwt HS*), hashed or sealed here.
/// `previous` is the stored definition an update replaces: its secret is kept when the
/// update carries none. Returns the definition, checked by compiling it.
pub fn from_input(
    mut input: serde_json::Value,
    name: Option<&str>,
    previous: Option<&SecurityDef>,
    key: &Key,
) -> Result<SecurityDef, String> {
    let obj = input
        .as_object_mut()
        .ok_or("a security definition is a JSON object")?;
    let plain = |obj: &mut serde_json::Map<String, serde_json::Value>, field: &str| match obj
        .remove(field)
    {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(Some(s)),
        Some(_) => Err(format!("{field} must be a non-empty string")),
    };
    let password = plain(obj, "password")?;
    let api_key = plain(obj, "key")?;
    let secret = plain(obj, "secret")?;
    if obj.contains_key("sealed") && (password.is_some() || api_key.is_some() || secret.is_some()) {
        return Err("give either sealed or a plaintext secret, not both".into());
    }
    if let Some(n) = name {
        match obj.get("name") {
            None => {
                obj.insert("name".into(), n.into());
            }
            Some(v) if v == n => {}
            Some(_) => return Err(format!("the body names another definition than {n}")),
        }
    }
    let mut def: SecurityDef = serde_json::from_value(input).map_err(|e| {
        format!("expected {{\"name\", \"type\": basic|apikey|jwt, …}}: {e} (see docs/SECURITY.md)")
    })?;
    validate_name(&def.name)?;
    let given = match def.kind {
        SecurityType::Basic => {
            if api_key.is_some() || secret.is_some() {
                return Err("a basic definition takes a password, not key or secret".into());
            }
            password.map(|p| hash_password(&p)).transpose()?
        }
        SecurityType::Apikey => {
            if password.is_some() || secret.is_some() {
                return Err("an apikey definition takes a key, not password or secret".into());
            }
            api_key
        }
        SecurityType::Jwt => {
            if password.is_some() || api_key.is_some() {
                return Err("a jwt definition takes a secret (HS*), not password or key".into());
            }
            secret
        }
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
        (SecurityType::Basic, Some(p)) => password_matches(&old_material, p),
        (_, Some(p)) => p == old_material,
        (_, None) => open(new).as_deref() == Some(old_material.as_str()),
    }
}

/// Whether a definition holds sealed material: all but JWT with public-key algorithms.
fn takes_secret(def: &SecurityDef) -> bool {
    def.kind != SecurityType::Jwt || def.algorithms.iter().any(|a| a.starts_with("HS"))
}

/// Concurrent argon2 verifications: the CPUs there are (at least 2).
fn argon2_slots() -> &'static tokio::sync::Semaphore {
    static SLOTS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    SLOTS.get_or_init(|| {
        let n = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
        tokio::sync::Semaphore::new(n)
    })
}

/// The most `leeway_s` may be (a day): clock skew, not a second expiry.
const MAX_LEEWAY_S: u64 = 86_400;

/// Whether `password` matches the argon2 PHC `hash` (slow by design: off the runtime).
fn password_matches(hash: &str, password: &str) -> bool {
    use argon2::password_hash::PasswordVerifier;
    argon2::PasswordHash::new(hash)
        .map(|h| {
            argon2::Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// An argon2id PHC hash of `password` with a random salt (the crate's default parameters).
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| format!("no randomness for a salt: {e}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
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

/// A token bucket.
#[derive(Debug)]
pub struct Bucket {
    limit: RateLimit,
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    pub fn new(limit: RateLimit) -> Bucket {
        let cap = limit.capacity();
        Bucket {
            limit,
            state: Mutex::new((cap, Instant::now())),
        }
    }

    /// Takes one token at `now`, or says how long until one is there.
    pub fn take(&self, now: Instant) -> Result<(), Duration> {
        let rate = self.limit.rate_per_s();
        let cap = self.limit.capacity();
        let mut s = self.state.lock().expect("bucket lock");
        let elapsed = now.saturating_duration_since(s.1).as_secs_f64();
        s.0 = (s.0 + elapsed * rate).min(cap);
        s.1 = now;
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - s.0) / rate))
        }
    }
}

fn too_many(what: &str, wait: Duration) -> Rejection {
    Rejection::TooMany {
        reason: format!("rate limit of {what} exceeded"),
        retry_after_s: wait.as_secs_f64().ceil().max(1.0) as u64,
    }
}

/// JWT keys: one fixed key, or a JWKS file's keys by `kid`.
enum JwtKeys {
    One(jsonwebtoken::DecodingKey),
    Set(Vec<(Option<String>, jsonwebtoken::DecodingKey)>),
}

enum Check {
    Basic {
        /// SHA-256 of the user name (compared in constant time with the caller's).
        username: [u8; 32],
        hash: String,
        challenge: String,
        /// SHA-256 of `user:password` pairs argon2 has accepted, so the slow hash runs once
        /// per credential, not per request. Only successes are kept; bounded.
        verified: Mutex<std::collections::HashSet<[u8; 32]>>,
    },
    Apikey {
        header: hyper::header::HeaderName,
        digest: [u8; 32],
    },
    Jwt {
        keys: JwtKeys,
        validation: jsonwebtoken::Validation,
        /// Tokens whose signature, algorithm, issuer and audience were verified, by SHA-256
        /// of the token: only the time claims are checked again on a later request. A
        /// token's bytes cannot change without its digest changing, and a changed definition
        /// compiles a new verifier with an empty cache. Bounded.
        verified: Mutex<HashMap<[u8; 32], VerifiedToken>>,
    },
}

/// What a verified token still has to pass on later requests.
#[derive(Debug, Clone)]
struct VerifiedToken {
    exp: i64,
    nbf: Option<i64>,
    subject: Option<String>,
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The time claims, as jsonwebtoken checks them: expired when `exp < now - leeway`, not
/// valid yet when `nbf > now + leeway`.
fn check_times(t: &VerifiedToken, leeway: u64) -> Result<(), &'static str> {
    let now = unix_now();
    let leeway = leeway as i64;
    if t.exp < now - leeway {
        return Err("token expired");
    }
    if t.nbf.is_some_and(|nbf| nbf > now + leeway) {
        return Err("token not valid yet (nbf)");
    }
    Ok(())
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

const VERIFIED_MAX: usize = 4096;

fn family(alg: jsonwebtoken::Algorithm) -> &'static str {
    use jsonwebtoken::Algorithm::*;
    match alg {
        HS256 | HS384 | HS512 => "hmac",
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => "rsa",
        ES256 | ES384 => "ec",
        EdDSA => "ed",
    }
}

fn digest(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

impl Verifier {
    /// Compiles a definition, opening its sealed material with `key`; every way the
    /// definition could not work is an error naming the field.
    pub fn compile(def: &SecurityDef, key: &Key) -> Result<Verifier, String> {
        let n = &def.name;
        let secret = || -> Result<String, String> {
            let sealed = def.sealed.as_deref().ok_or_else(|| match def.kind {
                SecurityType::Basic => format!("basic definition {n} needs a password"),
                SecurityType::Apikey => format!("apikey definition {n} needs a key"),
                SecurityType::Jwt => format!("jwt definition {n} needs a secret for HS*"),
            })?;
            key.open(&seal_name(n), sealed)
                .map(|p| p.expose().to_owned())
                .map_err(|e| format!("security definition {n}: {e}"))
        };
        let not_for = |field: &str, present: bool| {
            if present {
                Err(format!(
                    "{field} does not apply to a {} definition ({n})",
                    def.kind.as_str()
                ))
            } else {
                Ok(())
            }
        };
        if def.kind != SecurityType::Basic {
            not_for("username", def.username.is_some())?;
            not_for("realm", def.realm.is_some())?;
        }
        if def.kind != SecurityType::Apikey {
            not_for("header", def.header.is_some())?;
        }
        if def.kind != SecurityType::Jwt {
            not_for("algorithms", !def.algorithms.is_empty())?;
            not_for("issuer", def.issuer.is_some())?;
            not_for("audience", def.audience.is_some())?;
            not_for("public_key", def.public_key.is_some())?;
            not_for("jwks_file", def.jwks_file.is_some())?;
            not_for("leeway_s", def.leeway_s.is_some())?;
        }
        if let Some(l) = &def.rate_limit {
            l.validate()?;
        }
        let check = match def.kind {
            SecurityType::Basic => {
                let username = def
                    .username
                    .clone()
                    .filter(|u| !u.is_empty() && !u.contains(':'))
                    .ok_or_else(|| format!("basic definition {n} needs a username without ':'"))?;
                let hash = secret()?;
                argon2::PasswordHash::new(&hash)
                    .map_err(|e| format!("basic definition {n}: the stored hash: {e}"))?;
                let realm = def.realm.clone().unwrap_or_else(|| "oxbus".into());
                if realm.contains('"') || realm.contains('\\') {
                    return Err(format!(
                        "realm of {n} must not contain quotes or backslashes"
                    ));
                }
                Check::Basic {
                    username: digest(username.as_bytes()),
                    hash,
                    challenge: format!("Basic realm=\"{realm}\", charset=\"UTF-8\""),
                    verified: Mutex::new(Default::default()),
                }
            }
            SecurityType::Apikey => {
                let header = def.header.as_deref().unwrap_or(DEFAULT_KEY_HEADER);
                let header = hyper::header::HeaderName::from_bytes(header.as_bytes())
                    .map_err(|_| format!("header {header:?} of {n} is not a header name"))?;
                Check::Apikey {
                    header,
                    digest: digest(secret()?.as_bytes()),
                }
            }
            SecurityType::Jwt => {
                if def.algorithms.is_empty() {
                    return Err(format!(
                        "jwt definition {n} needs algorithms, e.g. [\"HS256\"]"
                    ));
                }
                let mut algs = Vec::new();
                for a in &def.algorithms {
                    let alg: jsonwebtoken::Algorithm = a.parse().map_err(|_| {
                        format!("algorithm {a:?} of {n} is not one of HS256/384/512, RS256/384/512, PS256/384/512, ES256/384, EdDSA")
                    })?;
                    algs.push(alg);
                }
                let fam = family(algs[0]);
                if algs.iter().any(|a| family(*a) != fam) {
                    // One key, one family: mixing HMAC and public-key algorithms is how a
                    // public key ends up used as an HMAC secret.
                    return Err(format!(
                        "algorithms of {n} mix families; one definition takes HS*, RS*/PS*, ES* or EdDSA only"
                    ));
                }
                let keys = if fam == "hmac" {
                    not_for("public_key", def.public_key.is_some())?;
                    not_for("jwks_file", def.jwks_file.is_some())?;
                    JwtKeys::One(jsonwebtoken::DecodingKey::from_secret(secret()?.as_bytes()))
                } else {
                    if def.sealed.is_some() {
                        return Err(format!(
                            "jwt definition {n} uses public keys: it takes public_key or jwks_file, not a secret"
                        ));
                    }
                    match (&def.public_key, &def.jwks_file) {
                        (Some(pem), None) => {
                            let k = match fam {
                                "rsa" => jsonwebtoken::DecodingKey::from_rsa_pem(pem.as_bytes()),
                                "ec" => jsonwebtoken::DecodingKey::from_ec_pem(pem.as_bytes()),
                                _ => jsonwebtoken::DecodingKey::from_ed_pem(pem.as_bytes()),
                            }
                            .map_err(|e| format!("public_key of {n}: {e}"))?;
                            JwtKeys::One(k)
                        }
                        (None, Some(path)) => JwtKeys::Set(load_jwks(path, fam, n)?),
                        _ => {
                            return Err(format!(
                                "jwt definition {n} needs exactly one of public_key (PEM) or jwks_file"
                            ));
                        }
                    }
                };
                if def.leeway_s.is_some_and(|l| l > MAX_LEEWAY_S) {
                    return Err(format!(
                        "leeway_s of {n} is at most {MAX_LEEWAY_S} (one day)"
                    ));
                }
                let mut v = jsonwebtoken::Validation::new(algs[0]);
                v.algorithms = algs;
                v.leeway = def.leeway_s.unwrap_or(0);
                v.validate_exp = true;
                v.validate_nbf = true;
                v.set_required_spec_claims(&["exp"]);
                match &def.issuer {
                    Some(i) => v.set_issuer(&[i]),
                    None => v.iss = None,
                }
                match &def.audience {
                    Some(a) => v.set_audience(&[a]),
                    None => v.validate_aud = false,
                }
                Check::Jwt {
                    keys,
                    validation: v,
                    verified: Mutex::new(HashMap::new()),
                }
            }
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
        match &self.check {
            Check::Basic {
                username,
                hash,
                challenge,
                verified,
            } => {
                let unauthorized = |reason: &str| Rejection::Unauthorized {
                    reason: reason.into(),
                    challenge: Some(challenge.clone()),
                };
                let Some(v) = headers.get(hyper::header::AUTHORIZATION) else {
                    return Err(unauthorized("credentials required (HTTP Basic)"));
                };
                let encoded = v
                    .to_str()
                    .ok()
                    .and_then(|s| {
                        s.strip_prefix("Basic ")
                            .or_else(|| s.strip_prefix("basic "))
                    })
                    .ok_or_else(|| unauthorized("expected Authorization: Basic"))?;
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(encoded.trim())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| unauthorized("malformed Basic credentials"))?;
                let (user, password) = decoded
                    .split_once(':')
                    .ok_or_else(|| unauthorized("malformed Basic credentials"))?;
                let user_ok: bool = digest(user.as_bytes()).ct_eq(username).into();
                let fingerprint = digest(decoded.as_bytes());
                if user_ok
                    && verified
                        .lock()
                        .expect("verified lock")
                        .contains(&fingerprint)
                {
                    return Ok(self.caller(Some(user.to_owned()), None));
                }
                // The hash runs whether or not the user name matched, so the time taken
                // does not tell a caller which one was wrong. At most a few run at once
                // (each takes ~19 MiB): a flood of guesses queues here instead of taking
                // every blocking thread and gigabytes of memory.
                let _permit = argon2_slots()
                    .acquire()
                    .await
                    .expect("the argon2 semaphore is never closed");
                let (hash, password) = (hash.clone(), password.to_owned());
                let pass_ok =
                    tokio::task::spawn_blocking(move || password_matches(&hash, &password))
                        .await
                        .unwrap_or(false);
                if !(user_ok && pass_ok) {
                    return Err(unauthorized("wrong user name or password"));
                }
                let mut set = verified.lock().expect("verified lock");
                if set.len() >= VERIFIED_MAX {
                    set.clear();
                }
                set.insert(fingerprint);
                Ok(self.caller(Some(user.to_owned()), None))
            }
            Check::Apikey { header, digest: d } => {
                let Some(v) = headers.get(header) else {
                    return Err(Rejection::Unauthorized {
                        reason: format!("API key required in header {header}"),
                        challenge: None,
                    });
                };
                if bool::from(digest(v.as_bytes()).ct_eq(d)) {
                    Ok(self.caller(None, None))
                } else {
                    Err(Rejection::Unauthorized {
                        reason: "wrong API key".into(),
                        challenge: None,
                    })
                }
            }
            Check::Jwt {
                keys,
                validation,
                verified,
            } => {
                let challenge = |err: Option<&str>| match err {
                    None => "Bearer realm=\"oxbus\"".to_owned(),
                    Some(e) => format!(
                        "Bearer realm=\"oxbus\", error=\"invalid_token\", error_description=\"{e}\""
                    ),
                };
                let token = headers
                    .get(hyper::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|s| {
                        s.strip_prefix("Bearer ")
                            .or_else(|| s.strip_prefix("bearer "))
                    });
                let Some(token) = token.map(str::trim) else {
                    return Err(Rejection::Unauthorized {
                        reason: "bearer token required".into(),
                        challenge: Some(challenge(None)),
                    });
                };
                let reject = |why: String| Rejection::Unauthorized {
                    challenge: Some(challenge(Some(&why))),
                    reason: why,
                };
                let fingerprint = digest(token.as_bytes());
                let known = verified
                    .lock()
                    .expect("verified lock")
                    .get(&fingerprint)
                    .cloned();
                if let Some(t) = known {
                    check_times(&t, validation.leeway).map_err(|e| reject(e.to_owned()))?;
                    return Ok(self.caller(None, t.subject));
                }
                let claims = decode_jwt(token, keys, validation).map_err(reject)?;
                let subject = claims
                    .get("sub")
                    .and_then(|s| s.as_str())
                    .map(str::to_owned);
                // `exp` is required, so a verified token has one (as an integer or a float).
                if let Some(exp) = claims.get("exp").and_then(|v| v.as_f64()) {
                    let t = VerifiedToken {
                        exp: exp as i64,
                        nbf: claims.get("nbf").and_then(|v| v.as_f64()).map(|n| n as i64),
                        subject: subject.clone(),
                    };
                    let mut cache = verified.lock().expect("verified lock");
                    if cache.len() >= VERIFIED_MAX {
                        cache.clear();
                    }
                    cache.insert(fingerprint, t);
                }
                Ok(self.caller(None, subject))
            }
        }
    }

    fn caller(&self, username: Option<String>, subject: Option<String>) -> Caller {
        Caller {
            name: self.name.clone(),
            kind: match self.check {
                Check::Basic { .. } => "basic",
                Check::Apikey { .. } => "apikey",
                Check::Jwt { .. } => "jwt",
            },
            username,
            subject,
        }
    }
}

fn load_jwks(
    path: &str,
    fam: &str,
    n: &str,
) -> Result<Vec<(Option<String>, jsonwebtoken::DecodingKey)>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("jwks_file {path} of {n}: {e}"))?;
    let set: jsonwebtoken::jwk::JwkSet =
        serde_json::from_str(&text).map_err(|e| format!("jwks_file {path} of {n}: {e}"))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let jwk_fam = match jwk.algorithm {
            jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => "rsa",
            jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => "ec",
            jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(_) => "ed",
            // A symmetric key in a key set would let anyone holding it sign: refused.
            jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_) => {
                return Err(format!(
                    "jwks_file {path} of {n} holds a symmetric (oct) key; it takes public keys only"
                ));
            }
        };
        if jwk_fam != fam {
            continue;
        }
        let k = jsonwebtoken::DecodingKey::from_jwk(jwk)
            .map_err(|e| format!("jwks_file {path} of {n}: {e}"))?;
        keys.push((jwk.common.key_id.clone(), k));
    }
    if keys.is_empty() {
        return Err(format!(
            "jwks_file {path} of {n} has no key for the definition's algorithms"
        ));
    }
    Ok(keys)
}

fn decode_jwt(
    token: &str,
    keys: &JwtKeys,
    validation: &jsonwebtoken::Validation,
) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    use jsonwebtoken::errors::ErrorKind;
    let header = jsonwebtoken::decode_header(token).map_err(|_| "malformed token".to_owned())?;
    // Checked before any key is touched: `alg: none` fails to parse above, and an algorithm
    // the definition does not list (e.g. HS256 against an RS256 public key) stops here.
    if !validation.algorithms.contains(&header.alg) {
        return Err(format!("algorithm {:?} not accepted", header.alg));
    }
    let key = match keys {
        JwtKeys::One(k) => k,
        JwtKeys::Set(set) => match &header.kid {
            Some(kid) => set
                .iter()
                .find(|(id, _)| id.as_deref() == Some(kid.as_str()))
                .map(|(_, k)| k)
                .ok_or_else(|| "unknown key id".to_owned())?,
            None if set.len() == 1 => &set[0].1,
            None => return Err("token has no key id (kid)".into()),
        },
    };
    jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, key, validation)
        .map(|d| d.claims)
        .map_err(|e| {
            match e.kind() {
                ErrorKind::ExpiredSignature => "token expired",
                ErrorKind::ImmatureSignature => "token not valid yet (nbf)",
                ErrorKind::InvalidAudience => "wrong audience",
                ErrorKind::InvalidIssuer => "wrong issuer",
                ErrorKind::InvalidSignature => "bad signature",
                ErrorKind::MissingRequiredClaim(_) => "token lacks exp",
                ErrorKind::InvalidAlgorithm => "algorithm not accepted",
                _ => "invalid token",
            }
            .to_owned()
        })
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
        if !self.allow.is_empty() && !self.allow.iter().any(|n| n.contains(&client)) {
            return Err(Rejection::Forbidden(format!(
                "{client} is not allowed to call channel {channel}"
            )));
        }
        if let Some(b) = &self.bucket {
            b.take(Instant::now())
                .map_err(|w| too_many(&format!("channel {channel}"), w))?;
        }
        let Some(v) = &self.security else {
            return Ok(None);
        };
        let caller = v.check(headers).await?;
        if let Some(b) = &v.bucket {
            b.take(Instant::now())
                .map_err(|w| too_many(&format!("security definition {}", v.name), w))?;
        }
        Ok(Some(caller))
    }
}

/// Parses an allow list entry: a CIDR, or a bare address (one host).
pub fn parse_allow(entry: &str) -> Result<IpNet, String> {
    let e = entry.trim();
    let net = e
        .parse::<IpNet>()
        .or_else(|_| e.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{entry:?} is not an IP address or CIDR (allow_from)"))?;
    if net.trunc() != net {
        // `192.0.2.7/24` allows the whole /24: almost always a mistake for one host.
        return Err(format!(
            "{entry:?} has host bits set (allow_from): write {} for the network, or the bare address for one host",
            net.trunc()
        ));
    }
    // Clients are compared in their canonical form (an IPv4-mapped IPv6 address as IPv4).
    Ok(match net {
        IpNet::V6(v6) => match v6.addr().to_ipv4_mapped() {
            Some(v4) if v6.prefix_len() >= 96 => {
                IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96).unwrap_or(net)
            }
            _ => net,
        },
        v4 => v4,
    })
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

fn copy_state(from: &Bucket, to: &Bucket) {
    if from.limit == to.limit {
        *to.state.lock().expect("bucket lock") = *from.state.lock().expect("bucket lock");
    }
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
    ) -> Result<Gate, String> {
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
                        copy_state(ob, b);
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
                .map(|e| parse_allow(e).map_err(|m| format!("channel {name}: {m}")))
                .collect::<Result<Vec<_>, _>>()?;
            let security = match &c.security {
                None => None,
                Some(s) => Some(verifiers.get(s).map(|(_, v)| v.clone()).ok_or_else(|| {
                    format!("channel {name} names security definition {s}, which does not exist")
                })?),
            };
            if let Some(l) = &c.rate_limit {
                l.validate().map_err(|m| format!("channel {name}: {m}"))?;
            }
            let identity = (name.to_owned(), c.methods.clone());
            let prev = previous.and_then(|p| p.carried.get(&identity));
            let bucket = c.rate_limit.as_ref().map(|l| {
                let b = Bucket::new(l.clone());
                // Same limit: carry the state over (a config change must not hand out a
                // fresh burst).
                if let Some(old) = prev.and_then(|p| p.bucket.as_ref()) {
                    copy_state(old, &b);
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

    /// The gate of a channel the routing table this gate belongs to returned.
    pub fn for_channel(&self, c: &Arc<Channel>) -> Option<&Arc<ChannelGate>> {
        self.channels.get(&(Arc::as_ptr(c) as usize))
    }
}

impl RateLimit {
    pub fn validate(&self) -> Result<(), String> {
        if self.requests == 0 || self.per_s == 0 || self.burst == Some(0) {
            return Err("rate_limit needs requests, per_s (and burst, if given) above 0".into());
        }
        Ok(())
    }
    fn rate_per_s(&self) -> f64 {
        self.requests as f64 / self.per_s as f64
    }
    fn capacity(&self) -> f64 {
        self.burst.unwrap_or(self.requests) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        let dir = std::env::temp_dir().join(format!("oxbus-gate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("k-{:?}", std::thread::current().id()));
        let _ = std::fs::remove_file(&path);
        Key::create(&path).unwrap()
    }

    #[test]
    fn bucket_admits_the_burst_then_paces() {
        let b = Bucket::new(RateLimit {
            requests: 2,
            per_s: 1,
            burst: Some(3),
        });
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(b.take(t0).is_ok());
        }
        let wait = b.take(t0).unwrap_err();
        assert!(wait > Duration::from_millis(400) && wait <= Duration::from_millis(500));
        assert!(b.take(t0 + Duration::from_millis(500)).is_ok());
        assert!(b.take(t0 + Duration::from_millis(500)).is_err());
        // Never more than the burst, however long it rested.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(b.take(later).is_ok());
        }
        assert!(b.take(later).is_err());
    }

    #[test]
    fn allow_entries_parse_as_cidrs_or_hosts() {
        assert!(
            parse_allow("10.0.0.0/8")
                .unwrap()
                .contains(&"10.1.2.3".parse::<IpAddr>().unwrap())
        );
        assert!(
            parse_allow("::1")
                .unwrap()
                .contains(&"::1".parse::<IpAddr>().unwrap())
        );
        assert!(parse_allow("2001:db8::/32").is_ok());
        assert!(parse_allow("10.0.0.0/33").is_err());
        assert!(parse_allow("example.com").is_err());
        // Host bits: almost always one host meant, refused rather than widened.
        let e = parse_allow("192.0.2.7/24").unwrap_err();
        assert!(e.contains("192.0.2.0/24"), "{e}");
        // IPv4-mapped entries match the canonical (IPv4) client addresses.
        assert_eq!(
            parse_allow("::ffff:10.0.0.0/104").unwrap(),
            "10.0.0.0/8".parse::<IpNet>().unwrap()
        );
        assert_eq!(
            parse_allow("::ffff:192.0.2.7").unwrap(),
            "192.0.2.7/32".parse::<IpNet>().unwrap()
        );
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

    #[test]
    fn cached_tokens_still_expire() {
        let t = |exp: i64, nbf: Option<i64>| VerifiedToken {
            exp,
            nbf,
            subject: None,
        };
        let now = unix_now();
        assert!(check_times(&t(now + 60, None), 0).is_ok());
        assert_eq!(check_times(&t(now - 5, None), 0), Err("token expired"));
        assert!(check_times(&t(now - 5, None), 30).is_ok());
        assert_eq!(
            check_times(&t(now + 60, Some(now + 30)), 0),
            Err("token not valid yet (nbf)")
        );
        assert!(check_times(&t(now + 60, Some(now + 30)), 60).is_ok());
    }

    #[tokio::test]
    async fn a_jwt_is_verified_once_then_served_from_the_cache() {
        let k = key();
        let d = from_input(
            serde_json::json!({"name": "j", "type": "jwt", "algorithms": ["HS256"], "secret": "s3"}),
            None,
            None,
            &k,
        )
        .unwrap();
        let v = Verifier::compile(&d, &k).unwrap();
        let token = |secret: &[u8]| {
            let claims = serde_json::json!({"sub": "u1", "exp": unix_now() + 60});
            jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(secret),
            )
            .unwrap()
        };
        let headers = |t: &str| {
            let mut h = hyper::HeaderMap::new();
            h.insert(
                hyper::header::AUTHORIZATION,
                format!("Bearer {t}").parse().unwrap(),
            );
            h
        };
        let good = token(b"s3");
        for _ in 0..2 {
            assert_eq!(
                v.check(&headers(&good)).await.unwrap().subject.as_deref(),
                Some("u1")
            );
        }
        let Check::Jwt { verified, .. } = &v.check else {
            unreachable!()
        };
        assert_eq!(verified.lock().unwrap().len(), 1);
        assert!(v.check(&headers(&token(b"other"))).await.is_err());
        assert_eq!(verified.lock().unwrap().len(), 1);
    }
}
