//! HTTP Basic: one user name and the argon2id hash of its password, checked with the slow
//! hash at most a few at once (a semaphore) and then remembered per credential. Hashing a
//! new password for a definition is here too; sealing it is the caller's.

use base64::Engine as _;
use std::collections::HashSet;
use std::sync::Mutex;
use subtle::ConstantTimeEq;

use super::{GateError, Rejection, VERIFIED_MAX, digest};
use crate::model::security::SecurityDef;

/// A compiled basic definition.
pub(super) struct Basic {
    /// SHA-256 of the user name (compared in constant time with the caller's).
    username: [u8; 32],
    hash: String,
    challenge: String,
    /// SHA-256 of `user:password` pairs argon2 has accepted, so the slow hash runs once
    /// per credential, not per request. Only successes are kept; bounded.
    verified: Mutex<HashSet<[u8; 32]>>,
}

/// Concurrent argon2 verifications: the CPUs there are (at least 2).
fn argon2_slots() -> &'static tokio::sync::Semaphore {
    static SLOTS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    SLOTS.get_or_init(|| {
        let n = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
        tokio::sync::Semaphore::new(n)
    })
}

/// Whether `password` matches the argon2 PHC `hash` (slow by design: off the runtime).
pub(super) fn password_matches(hash: &str, password: &str) -> bool {
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
pub fn hash_password(password: &str) -> Result<String, GateError> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(GateError::Salt)?;
    let salt = SaltString::encode_b64(&salt).map_err(GateError::SaltEncoding)?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(GateError::Hash)
}

impl Basic {
    /// Compiles a basic definition; `secret` opens its sealed password hash.
    pub(super) fn compile(
        def: &SecurityDef,
        secret: impl FnOnce() -> Result<String, GateError>,
    ) -> Result<Basic, GateError> {
        let n = &def.name;
        let username = def
            .username
            .clone()
            .filter(|u| !u.is_empty() && !u.contains(':'))
            .ok_or_else(|| GateError::Username(n.clone()))?;
        let hash = secret()?;
        argon2::PasswordHash::new(&hash).map_err(|error| GateError::StoredHash {
            name: n.clone(),
            error,
        })?;
        let realm = def.realm.clone().unwrap_or_else(|| "oxbus".into());
        if realm.contains('"') || realm.contains('\\') {
            return Err(GateError::Realm(n.clone()));
        }
        Ok(Basic {
            username: digest(username.as_bytes()),
            hash,
            challenge: format!("Basic realm=\"{realm}\", charset=\"UTF-8\""),
            verified: Mutex::new(Default::default()),
        })
    }

    /// Checks a request's credentials; the user name when they pass. A credential's first
    /// sight verifies the argon2 hash on a blocking thread; later requests with it cost a
    /// SHA-256.
    pub(super) async fn check(&self, headers: &hyper::HeaderMap) -> Result<String, Rejection> {
        let unauthorized = |reason: &str| Rejection::Unauthorized {
            reason: reason.into(),
            challenge: Some(self.challenge.clone()),
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
        let user_ok: bool = digest(user.as_bytes()).ct_eq(&self.username).into();
        let fingerprint = digest(decoded.as_bytes());
        if user_ok
            && self
                .verified
                .lock()
                .expect("verified lock")
                .contains(&fingerprint)
        {
            return Ok(user.to_owned());
        }
        // The hash runs whether or not the user name matched, so the time taken
        // does not tell a caller which one was wrong. At most a few run at once
        // (each takes ~19 MiB): a flood of guesses queues here instead of taking
        // every blocking thread and gigabytes of memory.
        let _permit = argon2_slots()
            .acquire()
            .await
            .expect("the argon2 semaphore is never closed");
        let (hash, password) = (self.hash.clone(), password.to_owned());
        let pass_ok = tokio::task::spawn_blocking(move || password_matches(&hash, &password))
            .await
            .unwrap_or(false);
        if !(user_ok && pass_ok) {
            return Err(unauthorized("wrong user name or password"));
        }
        let mut set = self.verified.lock().expect("verified lock");
        if set.len() >= VERIFIED_MAX {
            set.clear();
        }
        set.insert(fingerprint);
        Ok(user.to_owned())
    }
}
