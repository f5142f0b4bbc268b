//! The secrets services may read: `secret.get` (ipc-protocol/SPEC.md), Python's
//! `self.secrets[name]`. A stored secret names the services that may read it (`services`:
//! exact names or globs, `crate::model::secret_access`); an empty list — the default — lets
//! none. Boot applies the stored secrets from the store or the snapshot, the sync loop each
//! new config version's: a change of value or readers applies to the next call, no restart.
//!
//! A value is opened with the server's key the first time a service is allowed to read it
//! and kept opened in memory until the secret changes or goes; secrets no service may read
//! are never opened here. Credentials of outgoing connections are sealed inside their
//! definitions (`crate::model::outgoing`), are not secrets of this kind, and no op sends
//! them to a worker.
//!
//! What `services` is and is not: the services of one worker share a Python process, so
//! code of one service can reach anything that process holds; `services` keeps a value out
//! of the services that do not ask for it and guards against mistakes (a service reading
//! another's secret by a wrong name), it is not a boundary against hostile code deployed in
//! the same server. The boundary that holds is that connection credentials never reach any
//! worker (docs/OUTGOING.md).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use crate::model::secret_access;
use crate::secrets::{Key, Plain};

/// A stored secret as this subsystem needs it: its sealed value and who may read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadableSecret {
    pub name: String,
    pub sealed: String,
    pub services: Vec<String>,
}

/// Why a service could not read a secret; each maps to SPEC's `error` code.
#[derive(Debug, thiserror::Error)]
pub enum SecretReadError {
    #[error("no secret named {0:?}")]
    Unknown(String),
    #[error(
        "service {service:?} may not read secret {name:?} (its services do not name it: \
         oxbus secret services {name} --service ...)"
    )]
    NotAllowed { name: String, service: String },
    #[error("secret {name:?} cannot be opened with this server's key: {source}")]
    Open {
        name: String,
        #[source]
        source: crate::secrets::SecretError,
    },
}

impl SecretReadError {
    /// SPEC's (status, error code).
    pub fn code(&self) -> (u16, &'static str) {
        match self {
            SecretReadError::Unknown(_) => (404, "unknown_secret"),
            SecretReadError::NotAllowed { .. } => (403, "not_allowed"),
            // The stored value is unusable here: a failure of the server, not of the call.
            SecretReadError::Open { .. } => (500, "io"),
        }
    }
}

#[derive(Debug)]
struct Entry {
    def: ReadableSecret,
    /// The opened value, once a service read it.
    opened: OnceLock<Plain>,
}

/// This server's secrets as services may read them.
#[derive(Debug, Default)]
pub struct ServiceSecrets {
    map: RwLock<HashMap<String, Arc<Entry>>>,
}

impl ServiceSecrets {
    /// Makes `secrets` the stored secrets: an unchanged one keeps its opened value, a
    /// changed one is opened again when next read, a gone one is forgotten.
    pub fn apply(&self, secrets: impl IntoIterator<Item = ReadableSecret>) {
        let mut map = self.map.write().expect("secrets lock");
        let mut next = HashMap::new();
        for def in secrets {
            let entry = match map.remove(&def.name) {
                Some(e) if e.def == def => e,
                _ => Arc::new(Entry {
                    def,
                    opened: OnceLock::new(),
                }),
            };
            next.insert(entry.def.name.clone(), entry);
        }
        *map = next;
    }

    /// The value of secret `name` for service `service`, if its `services` name it.
    pub fn get(&self, key: &Key, name: &str, service: &str) -> Result<String, SecretReadError> {
        let entry = self
            .map
            .read()
            .expect("secrets lock")
            .get(name)
            .cloned()
            .ok_or_else(|| SecretReadError::Unknown(name.to_owned()))?;
        if !secret_access::allowed(&entry.def.services, service) {
            return Err(SecretReadError::NotAllowed {
                name: name.to_owned(),
                service: service.to_owned(),
            });
        }
        if let Some(p) = entry.opened.get() {
            return Ok(p.expose().to_owned());
        }
        let plain = key
            .open(name, &entry.def.sealed)
            .map_err(|source| SecretReadError::Open {
                name: name.to_owned(),
                source,
            })?;
        Ok(entry.opened.get_or_init(|| plain).expose().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        let dir = std::env::temp_dir().join(format!(
            "oxbus-service-secrets-{}-{}",
            std::process::id(),
            crate::random::random_hex(8)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let k = Key::load(None, &dir.join("key"), None).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        k
    }

    fn def(key: &Key, name: &str, value: &str, services: &[&str]) -> ReadableSecret {
        ReadableSecret {
            name: name.into(),
            sealed: key.seal(name, value),
            services: services.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn allowed_unknown_and_refused() {
        let k = key();
        let s = ServiceSecrets::default();
        s.apply([
            def(&k, "crm.key", "k-1", &["crm.*"]),
            def(&k, "none", "n", &[]),
        ]);
        assert_eq!(s.get(&k, "crm.key", "crm.get").unwrap(), "k-1");
        assert!(matches!(
            s.get(&k, "crm.key", "billing.get"),
            Err(SecretReadError::NotAllowed { .. })
        ));
        assert!(matches!(
            s.get(&k, "none", "crm.get"),
            Err(SecretReadError::NotAllowed { .. })
        ));
        let e = s.get(&k, "nope", "crm.get").unwrap_err();
        assert_eq!(e.code(), (404, "unknown_secret"));
        assert!(e.to_string().contains("nope"));
    }

    #[test]
    fn apply_changes_value_and_readers() {
        let k = key();
        let s = ServiceSecrets::default();
        s.apply([def(&k, "t", "one", &["a"])]);
        assert_eq!(s.get(&k, "t", "a").unwrap(), "one");
        s.apply([def(&k, "t", "two", &["b"])]);
        assert!(s.get(&k, "t", "a").is_err());
        assert_eq!(s.get(&k, "t", "b").unwrap(), "two");
        s.apply([]);
        assert!(matches!(
            s.get(&k, "t", "b"),
            Err(SecretReadError::Unknown(_))
        ));
    }
}
