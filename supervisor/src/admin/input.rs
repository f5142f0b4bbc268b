//! What the admin API refuses in a request body before anything is stored: a body that is
//! not JSON ([`InputError`]; its text is the 400 answer's `error` byte for byte). A cache
//! definition's shape is checked by `model::cache::parse_cache_def`. No I/O: plain parsing.

use serde_json::Value;

/// A request body refused as input (400).
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The body does not parse as JSON.
    #[error("the body is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
}

/// A request body that must be JSON (serde_json's message quotes no input beyond a position).
pub(super) fn json_body(body: &[u8]) -> Result<Value, InputError> {
    serde_json::from_slice(body).map_err(InputError::NotJson)
}
