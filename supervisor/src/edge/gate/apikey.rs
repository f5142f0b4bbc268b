//! API keys: a definition's header and the SHA-256 of its key, compared in constant time
//! with what a request carries. Nothing is remembered between requests.

use subtle::ConstantTimeEq;

use super::{GateError, Rejection, digest};
use crate::model::security::{DEFAULT_KEY_HEADER, SecurityDef};

/// A compiled apikey definition.
pub(super) struct ApiKey {
    header: hyper::header::HeaderName,
    digest: [u8; 32],
}

impl ApiKey {
    /// Compiles an apikey definition; `secret` opens its sealed key.
    pub(super) fn compile(
        def: &SecurityDef,
        secret: impl FnOnce() -> Result<String, GateError>,
    ) -> Result<ApiKey, GateError> {
        let header = def.header.as_deref().unwrap_or(DEFAULT_KEY_HEADER);
        let header = hyper::header::HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
            GateError::Header {
                header: header.to_owned(),
                name: def.name.clone(),
            }
        })?;
        Ok(ApiKey {
            header,
            digest: digest(secret()?.as_bytes()),
        })
    }

    /// The header the key is sent in.
    pub(super) fn header(&self) -> &hyper::header::HeaderName {
        &self.header
    }

    /// Checks the key a request's headers carry.
    pub(super) fn check(&self, headers: &hyper::HeaderMap) -> Result<(), Rejection> {
        let Some(v) = headers.get(&self.header) else {
            return Err(Rejection::Unauthorized {
                reason: format!("API key required in header {}", self.header),
                challenge: None,
            });
        };
        if bool::from(digest(v.as_bytes()).ct_eq(&self.digest)) {
            Ok(())
        } else {
            Err(Rejection::Unauthorized {
                reason: "wrong API key".into(),
                challenge: None,
            })
        }
    }
}
