//! Who is calling the admin API: the bearer token is looked up and becomes an [`Identity`]
//! (a name and a [`Role`]). The bootstrap token file is the root identity (role `admin`).

use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};

use super::{Body, Ctx, error};

/// What an identity may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything.
    Admin,
}

/// The caller of one admin request, as its bearer token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `root` for the bootstrap token file.
    pub name: String,
    pub role: Role,
}

/// The name of the identity the bootstrap token file holds.
pub const ROOT: &str = "root";

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The identity of `req`'s bearer token, or the 401 to answer.
pub async fn authenticate<B>(
    req: &Request<B>,
    _cx: &Ctx,
    root_token: &str,
) -> Result<Identity, Response<Body>> {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if let Some(t) = presented
        && same(t.as_bytes(), root_token.as_bytes())
    {
        return Ok(Identity {
            name: ROOT.to_owned(),
            role: Role::Admin,
        });
    }
    let mut r = error(
        StatusCode::UNAUTHORIZED,
        "missing or wrong bearer token (Authorization: Bearer <token from the admin token file>)",
    );
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Err(r)
}
