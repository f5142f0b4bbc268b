//! Cache definitions: [`CacheDef`] as stored and exported, its defaults and limits, and its
//! validation. Plain data: no storage, no clock, no I/O; it may not use the rest of the crate
//! but [`CacheDefError`].

use crate::error::CacheDefError;
use serde::{Deserialize, Serialize};

/// The cache that always exists.
pub const DEFAULT_CACHE: &str = "default";
/// Upper bound of `max_item_size`: a value travels in one IPC frame and, replicated, in one
/// bus frame of at most 64 MiB, where JSON text is escaped (up to twice its size).
pub const MAX_ITEM_SIZE_LIMIT: u64 = 16 * 1024 * 1024;
/// Upper bound of `max_entries`.
pub const MAX_ENTRIES_LIMIT: u64 = 100_000_000;

fn default_max_entries() -> u64 {
    10_000
}
fn default_max_item_size() -> u64 {
    1024 * 1024
}
fn yes() -> bool {
    true
}

/// A cache definition as stored and exported.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CacheDef {
    pub name: String,
    /// At most this many entries; beyond it the least valuable are evicted (moka's TinyLFU).
    #[serde(default = "default_max_entries")]
    pub max_entries: u64,
    /// Largest value accepted, bytes (JSON text or raw bytes); a larger one is refused.
    #[serde(default = "default_max_item_size")]
    pub max_item_size: u64,
    /// Expiry of a `set` that names none, seconds; 0 = never.
    #[serde(default)]
    pub default_expiry_s: u64,
    /// A `get` that finds an entry with an expiry pushes it forward by the entry's expiry
    /// (on the server that served the get: reads are not replicated).
    #[serde(default)]
    pub extend_expiry_on_get: bool,
    /// Writes reach the other servers of the cluster.
    #[serde(default = "yes")]
    pub replicate: bool,
}

impl CacheDef {
    /// The `default` cache as it is when no definition names it.
    pub fn builtin_default() -> CacheDef {
        CacheDef::named(DEFAULT_CACHE)
    }

    /// A definition with every setting at its default.
    pub fn named(name: &str) -> CacheDef {
        CacheDef {
            name: name.to_owned(),
            max_entries: default_max_entries(),
            max_item_size: default_max_item_size(),
            default_expiry_s: 0,
            extend_expiry_on_get: false,
            replicate: true,
        }
    }

    /// Checks every field; the message names the field.
    pub fn validate(&self) -> Result<(), CacheDefError> {
        validate_name(&self.name)?;
        if !(1..=MAX_ENTRIES_LIMIT).contains(&self.max_entries) {
            return Err(CacheDefError::MaxEntries {
                cache: self.name.clone(),
                got: self.max_entries,
            });
        }
        if !(1..=MAX_ITEM_SIZE_LIMIT).contains(&self.max_item_size) {
            return Err(CacheDefError::MaxItemSize {
                cache: self.name.clone(),
                got: self.max_item_size,
            });
        }
        if self.default_expiry_s > MAX_EXPIRY_S {
            return Err(CacheDefError::DefaultExpiry {
                cache: self.name.clone(),
                got: self.default_expiry_s,
            });
        }
        Ok(())
    }
}

/// Ten years: longer expiries are refused rather than overflowing anything.
pub const MAX_EXPIRY_S: u64 = 10 * 366 * 24 * 3600;

/// Valid cache names: 1-64 of letters, digits, `._-`.
pub fn validate_name(name: &str) -> Result<(), CacheDefError> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(CacheDefError::Name(name.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_are_validated_with_the_field_named() {
        let mut d = CacheDef::named("sessions");
        assert!(d.validate().is_ok());
        d.max_entries = 0;
        assert!(
            d.validate()
                .unwrap_err()
                .to_string()
                .contains("max_entries")
        );
        d = CacheDef::named("a b");
        assert!(
            d.validate()
                .unwrap_err()
                .to_string()
                .contains("not a valid cache name")
        );
        d = CacheDef::named("x");
        d.max_item_size = MAX_ITEM_SIZE_LIMIT + 1;
        assert!(
            d.validate()
                .unwrap_err()
                .to_string()
                .contains("max_item_size")
        );
        let parsed: Result<CacheDef, _> = serde_json::from_str(r#"{"name":"x","bogus":1}"#);
        assert!(parsed.is_err());
        let parsed: CacheDef = serde_json::from_str(r#"{"name":"x"}"#).unwrap();
        assert_eq!(parsed, CacheDef::named("x"));
    }
}
