//! Who a pub/sub request is, when its channel names no security definition: Zato's model of
//! one `/zato/pubsub` channel for many endpoints. The request must pass the security
//! definition of one of the pub/sub endpoints; only the definitions its credentials could
//! be for are tried (basic: the one whose user name the request gives; apikey: those whose
//! header it carries; jwt: each, when it carries a bearer token), so a request costs at most
//! one argon2 hash per basic definition of that user name.

use base64::Engine as _;

use crate::edge::gate::{Gate, Rejection};
use crate::model::security::{DEFAULT_KEY_HEADER, SecurityType};
use crate::pubsub::Defs;

/// The user name of a request's `Authorization: Basic`, unverified.
fn basic_user(headers: &hyper::HeaderMap) -> Option<String> {
    let v = headers.get(hyper::header::AUTHORIZATION)?.to_str().ok()?;
    let enc = v
        .strip_prefix("Basic ")
        .or_else(|| v.strip_prefix("basic "))?;
    let dec = base64::engine::general_purpose::STANDARD
        .decode(enc.trim())
        .ok()?;
    let s = String::from_utf8(dec).ok()?;
    s.split_once(':').map(|(u, _)| u.to_owned())
}

fn has_bearer(headers: &hyper::HeaderMap) -> bool {
    headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("Bearer ") || v.starts_with("bearer "))
}

/// The one answer to credentials no endpoint's definition accepts, whatever was wrong: a
/// caller learns nothing of which definitions, user names or keys exist.
pub const REFUSED: &str = "credentials of a pub/sub endpoint's security definition required";

/// The name of the endpoint security definition `headers` pass. 401 ([`REFUSED`], with a
/// Bearer challenge when a bearer token was refused, else a Basic one when an endpoint uses
/// Basic) when none does, or when more than one does (which definition would be ambiguous);
/// 429 when one that does is over its rate limit.
pub async fn endpoint_security(
    gate: &Gate,
    defs: &Defs,
    headers: &hyper::HeaderMap,
) -> Result<String, Rejection> {
    let mut names: Vec<&str> = defs
        .endpoints
        .values()
        .map(|e| e.security.as_str())
        .collect();
    names.sort_unstable();
    names.dedup();
    let user = basic_user(headers);
    let bearer = has_bearer(headers);
    // The realm of the challenge: the first Basic endpoint definition's.
    let mut realm: Option<String> = None;
    let mut first_basic = None;
    let mut basic_tried = false;
    let mut bearer_refused = false;
    let mut accepted: Vec<String> = Vec::new();
    for name in names {
        // An endpoint naming a definition that does not exist (or did not compile) lets
        // nobody in.
        let Some((def, verifier)) = gate.verifier(name) else {
            continue;
        };
        let candidate = match def.kind {
            SecurityType::Basic => {
                if realm.is_none() {
                    realm = Some(def.realm.clone().unwrap_or_else(|| "oxbus".into()));
                    first_basic = Some(verifier);
                }
                let c = user.is_some() && def.username == user;
                basic_tried |= c;
                c
            }
            SecurityType::Apikey => {
                headers.contains_key(def.header.as_deref().unwrap_or(DEFAULT_KEY_HEADER))
            }
            SecurityType::Jwt => bearer,
        };
        if !candidate {
            continue;
        }
        match verifier.admit(headers).await {
            Ok(caller) => accepted.push(caller.name.to_string()),
            Err(r @ Rejection::TooMany { .. }) => return Err(r),
            Err(_) => bearer_refused |= def.kind == SecurityType::Jwt,
        }
    }
    // A Basic user name no definition has costs the same hash as a wrong password (the
    // verifier hashes whatever the user name), so the time taken does not tell them apart.
    if user.is_some()
        && !basic_tried
        && let Some(v) = first_basic
    {
        let _ = v.admit(headers).await;
    }
    if accepted.len() == 1 {
        return Ok(accepted.remove(0));
    }
    if accepted.len() > 1 {
        tracing::warn!(
            definitions = ?accepted,
            "pubsub: a request's credentials pass more than one endpoint's security \
             definition: refused (give each endpoint credentials of its own)"
        );
    }
    let challenge = if bearer_refused {
        Some("Bearer realm=\"oxbus\"".to_owned())
    } else {
        realm.map(|r| format!("Basic realm=\"{r}\", charset=\"UTF-8\""))
    };
    Err(Rejection::Unauthorized {
        reason: REFUSED.into(),
        challenge,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_user_is_read_without_verifying() {
        let mut h = hyper::HeaderMap::new();
        assert_eq!(basic_user(&h), None);
        let c = base64::engine::general_purpose::STANDARD.encode("ann:pw:with:colons");
        h.insert(
            hyper::header::AUTHORIZATION,
            format!("Basic {c}").parse().unwrap(),
        );
        assert_eq!(basic_user(&h).as_deref(), Some("ann"));
        assert!(!has_bearer(&h));
        h.insert(
            hyper::header::AUTHORIZATION,
            "Bearer x.y.z".parse().unwrap(),
        );
        assert_eq!(basic_user(&h), None);
        assert!(has_bearer(&h));
    }
}
