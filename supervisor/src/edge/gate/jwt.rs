//! JWT bearer tokens: a definition's algorithms, key (a shared HS* secret, a PEM public key
//! or a JWKS file's keys by `kid`), issuer, audience and leeway compiled into a verifier, and
//! the cache of tokens already verified. Reads the JWKS file when compiled; never the store.

use std::collections::HashMap;
use std::sync::Mutex;

use super::{GateError, Rejection, VERIFIED_MAX, digest, not_for};
use crate::model::security::SecurityDef;

/// The most `leeway_s` may be (a day): clock skew, not a second expiry.
pub const MAX_LEEWAY_S: u64 = 86_400;

/// JWT keys: one fixed key, or a JWKS file's keys by `kid`.
enum JwtKeys {
    One(jsonwebtoken::DecodingKey),
    Set(Vec<(Option<String>, jsonwebtoken::DecodingKey)>),
}

/// A compiled JWT definition.
pub(super) struct Jwt {
    keys: JwtKeys,
    validation: jsonwebtoken::Validation,
    /// Tokens whose signature, algorithm, issuer and audience were verified, by SHA-256
    /// of the token: only the time claims are checked again on a later request. A
    /// token's bytes cannot change without its digest changing, and a changed definition
    /// compiles a new verifier with an empty cache. Bounded.
    verified: Mutex<HashMap<[u8; 32], VerifiedToken>>,
}

/// What a verified token still has to pass on later requests.
#[derive(Debug, Clone)]
struct VerifiedToken {
    exp: i64,
    nbf: Option<i64>,
    subject: Option<String>,
}

/// Why a token was refused: the reason a 401 carries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("algorithm {0:?} not accepted")]
    Algorithm(jsonwebtoken::Algorithm),
    #[error("unknown key id")]
    UnknownKid,
    #[error("token has no key id (kid)")]
    NoKid,
    #[error("{0}")]
    Claims(&'static str),
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

fn family(alg: jsonwebtoken::Algorithm) -> &'static str {
    use jsonwebtoken::Algorithm::*;
    match alg {
        HS256 | HS384 | HS512 => "hmac",
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => "rsa",
        ES256 | ES384 => "ec",
        EdDSA => "ed",
    }
}

impl Jwt {
    /// Compiles a jwt definition; `secret` opens its sealed HMAC secret.
    pub(super) fn compile(
        def: &SecurityDef,
        secret: impl FnOnce() -> Result<String, GateError>,
    ) -> Result<Jwt, GateError> {
        let n = &def.name;
        if def.algorithms.is_empty() {
            return Err(GateError::NoAlgorithms(n.clone()));
        }
        let mut algs = Vec::new();
        for a in &def.algorithms {
            let alg: jsonwebtoken::Algorithm = a.parse().map_err(|_| GateError::Algorithm {
                alg: a.clone(),
                name: n.clone(),
            })?;
            algs.push(alg);
        }
        let fam = family(algs[0]);
        if algs.iter().any(|a| family(*a) != fam) {
            // One key, one family: mixing HMAC and public-key algorithms is how a
            // public key ends up used as an HMAC secret.
            return Err(GateError::MixedFamilies(n.clone()));
        }
        let keys = if fam == "hmac" {
            not_for(def, "public_key", def.public_key.is_some())?;
            not_for(def, "jwks_file", def.jwks_file.is_some())?;
            JwtKeys::One(jsonwebtoken::DecodingKey::from_secret(secret()?.as_bytes()))
        } else {
            if def.sealed.is_some() {
                return Err(GateError::SecretForPublicKeys(n.clone()));
            }
            match (&def.public_key, &def.jwks_file) {
                (Some(pem), None) => {
                    let k = match fam {
                        "rsa" => jsonwebtoken::DecodingKey::from_rsa_pem(pem.as_bytes()),
                        "ec" => jsonwebtoken::DecodingKey::from_ec_pem(pem.as_bytes()),
                        _ => jsonwebtoken::DecodingKey::from_ed_pem(pem.as_bytes()),
                    }
                    .map_err(|source| GateError::PublicKey {
                        name: n.clone(),
                        source,
                    })?;
                    JwtKeys::One(k)
                }
                (None, Some(path)) => JwtKeys::Set(load_jwks(path, fam, n)?),
                _ => return Err(GateError::KeySource(n.clone())),
            }
        };
        if def.leeway_s.is_some_and(|l| l > MAX_LEEWAY_S) {
            return Err(GateError::Leeway(n.clone()));
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
        Ok(Jwt {
            keys,
            validation: v,
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// Checks the bearer token of a request's headers; the token's subject when it passes.
    pub(super) fn check(&self, headers: &hyper::HeaderMap) -> Result<Option<String>, Rejection> {
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
        let known = self
            .verified
            .lock()
            .expect("verified lock")
            .get(&fingerprint)
            .cloned();
        if let Some(t) = known {
            check_times(&t, self.validation.leeway).map_err(|e| reject(e.to_owned()))?;
            return Ok(t.subject);
        }
        let claims =
            decode_jwt(token, &self.keys, &self.validation).map_err(|e| reject(e.to_string()))?;
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
            let mut cache = self.verified.lock().expect("verified lock");
            if cache.len() >= VERIFIED_MAX {
                cache.clear();
            }
            cache.insert(fingerprint, t);
        }
        Ok(subject)
    }
}

fn load_jwks(
    path: &str,
    fam: &str,
    n: &str,
) -> Result<Vec<(Option<String>, jsonwebtoken::DecodingKey)>, GateError> {
    let jwks = |source: Box<dyn std::error::Error + Send + Sync>| GateError::Jwks {
        path: path.to_owned(),
        name: n.to_owned(),
        source,
    };
    let text = std::fs::read_to_string(path).map_err(|e| jwks(e.into()))?;
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&text).map_err(|e| jwks(e.into()))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let jwk_fam = match jwk.algorithm {
            jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => "rsa",
            jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => "ec",
            jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(_) => "ed",
            // A symmetric key in a key set would let anyone holding it sign: refused.
            jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_) => {
                return Err(GateError::JwksSymmetric {
                    path: path.to_owned(),
                    name: n.to_owned(),
                });
            }
        };
        if jwk_fam != fam {
            continue;
        }
        let k = jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|e| jwks(e.into()))?;
        keys.push((jwk.common.key_id.clone(), k));
    }
    if keys.is_empty() {
        return Err(GateError::JwksEmpty {
            path: path.to_owned(),
            name: n.to_owned(),
        });
    }
    Ok(keys)
}

fn decode_jwt(
    token: &str,
    keys: &JwtKeys,
    validation: &jsonwebtoken::Validation,
) -> Result<serde_json::Map<String, serde_json::Value>, TokenError> {
    use jsonwebtoken::errors::ErrorKind;
    let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
    // Checked before any key is touched: `alg: none` fails to parse above, and an algorithm
    // the definition does not list (e.g. HS256 against an RS256 public key) stops here.
    if !validation.algorithms.contains(&header.alg) {
        return Err(TokenError::Algorithm(header.alg));
    }
    let key = match keys {
        JwtKeys::One(k) => k,
        JwtKeys::Set(set) => match &header.kid {
            Some(kid) => set
                .iter()
                .find(|(id, _)| id.as_deref() == Some(kid.as_str()))
                .map(|(_, k)| k)
                .ok_or(TokenError::UnknownKid)?,
            None if set.len() == 1 => &set[0].1,
            None => return Err(TokenError::NoKid),
        },
    };
    jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, key, validation)
        .map(|d| d.claims)
        .map_err(|e| {
            TokenError::Claims(match e.kind() {
                ErrorKind::ExpiredSignature => "token expired",
                ErrorKind::ImmatureSignature => "token not valid yet (nbf)",
                ErrorKind::InvalidAudience => "wrong audience",
                ErrorKind::InvalidIssuer => "wrong issuer",
                ErrorKind::InvalidSignature => "bad signature",
                ErrorKind::MissingRequiredClaim(_) => "token lacks exp",
                ErrorKind::InvalidAlgorithm => "algorithm not accepted",
                _ => "invalid token",
            })
        })
}

#[cfg(test)]
mod tests {
    use super::super::{Check, Verifier, from_input, tests::key};
    use super::*;

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
        let Check::Jwt(jwt) = &v.check else {
            unreachable!()
        };
        let verified = &jwt.verified;
        assert_eq!(verified.lock().unwrap().len(), 1);
        assert!(v.check(&headers(&token(b"other"))).await.is_err());
        assert_eq!(verified.lock().unwrap().len(), 1);
    }
}
