//! The crate's errors: [`CacheError`] (a refused cache operation, with its REPLY status and
//! kind) and [`CacheDefError`] (an invalid cache definition). Messages are part of the admin
//! API and the IPC protocol: keep them byte for byte.

use crate::def::{MAX_ENTRIES_LIMIT, MAX_EXPIRY_S, MAX_ITEM_SIZE_LIMIT};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheError {
    #[error("no cache named {0}")]
    UnknownCache(String),
    #[error("the value is {size} bytes, more than cache {cache}'s max_item_size of {max}")]
    TooLarge {
        cache: String,
        size: usize,
        max: u64,
    },
    #[error("the value of {key:?} is not an integer")]
    NotInteger { key: String },
    #[error("incrementing {key:?} overflows a 64-bit integer")]
    Overflow { key: String },
    #[error("{0}")]
    Invalid(String),
}

impl CacheError {
    /// The REPLY status (and admin API status) of this error.
    pub fn status(&self) -> u16 {
        match self {
            CacheError::UnknownCache(_) => 404,
            CacheError::TooLarge { .. } => 413,
            CacheError::NotInteger { .. } | CacheError::Overflow { .. } => 409,
            CacheError::Invalid(_) => 400,
        }
    }

    /// The REPLY meta's `error` kind, which the Python side turns into an exception class.
    pub fn kind(&self) -> &'static str {
        match self {
            CacheError::UnknownCache(_) => "unknown_cache",
            CacheError::TooLarge { .. } => "too_large",
            CacheError::NotInteger { .. } | CacheError::Overflow { .. } => "not_integer",
            CacheError::Invalid(_) => "invalid",
        }
    }
}

/// Why a cache definition is invalid; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheDefError {
    #[error("{0:?} is not a valid cache name (1-64 characters: letters, digits, ._-)")]
    Name(String),
    #[error("cache {cache}: max_entries must be 1..={MAX_ENTRIES_LIMIT}, got {got}")]
    MaxEntries { cache: String, got: u64 },
    #[error("cache {cache}: max_item_size must be 1..={MAX_ITEM_SIZE_LIMIT} bytes, got {got}")]
    MaxItemSize { cache: String, got: u64 },
    #[error("cache {cache}: default_expiry_s must be at most {MAX_EXPIRY_S} (10 years), got {got}")]
    DefaultExpiry { cache: String, got: u64 },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definition_errors_read_as_they_always_have() {
        let cases = [
            (
                CacheDefError::Name("a b".into()),
                r#""a b" is not a valid cache name (1-64 characters: letters, digits, ._-)"#,
            ),
            (
                CacheDefError::MaxEntries {
                    cache: "x".into(),
                    got: 0,
                },
                "cache x: max_entries must be 1..=100000000, got 0",
            ),
            (
                CacheDefError::MaxItemSize {
                    cache: "x".into(),
                    got: 0,
                },
                "cache x: max_item_size must be 1..=16777216 bytes, got 0",
            ),
            (
                CacheDefError::DefaultExpiry {
                    cache: "x".into(),
                    got: 316224001,
                },
                "cache x: default_expiry_s must be at most 316224000 (10 years), got 316224001",
            ),
        ];
        for (e, want) in cases {
            assert_eq!(e.to_string(), want);
        }
    }
}
