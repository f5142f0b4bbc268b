//! A security definition as plain data ([`SecurityDef`]: what the store holds and an export
//! carries, its secret material only sealed) and the parse of what an operator sends into
//! one ([`parse_input`]). No I/O and no crypto here: hashing a password, sealing the material
//! and compiling the definition into a verifier are `edge::gate`'s.

use serde::{Deserialize, Serialize};

use crate::model::channel::RateLimit;

/// What is wrong with a security definition as sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecurityDefError {
    #[error("a security definition is a JSON object")]
    NotAnObject,
    #[error("{0} must be a non-empty string")]
    NotAString(&'static str),
    #[error("give either sealed or a plaintext secret, not both")]
    SealedAndPlain,
    #[error("the body names another definition than {0}")]
    OtherName(String),
    #[error("expected {{\"name\", \"type\": basic|apikey|jwt, …}}: {0} (see docs/SECURITY.md)")]
    Shape(String),
    #[error(
        "{0:?} is not a valid security definition name (1-200 characters: letters, digits, ._-)"
    )]
    Name(String),
    #[error("a basic definition takes a password, not key or secret")]
    BasicTakesPassword,
    #[error("an apikey definition takes a key, not password or secret")]
    ApikeyTakesKey,
    #[error("a jwt definition takes a secret (HS*), not password or key")]
    JwtTakesSecret,
}

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
pub fn validate_name(name: &str) -> Result<(), SecurityDefError> {
    if name.is_empty()
        || name.len() > 200
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(SecurityDefError::Name(name.to_owned()));
    }
    Ok(())
}

/// A definition parsed from what an operator sent, and the plaintext secret material that
/// came with it (`password` for basic, `key` for apikey, `secret` for jwt HS*), not yet
/// hashed or sealed.
#[derive(Debug)]
pub struct Input {
    pub def: SecurityDef,
    pub plain: Option<String>,
}

/// Parses what an operator sends: the stored fields plus at most one plaintext field, the
/// one the definition's type takes. `name`, when given (a `PUT` to a named definition), must
/// be the body's name or fills it in.
pub fn parse_input(
    mut input: serde_json::Value,
    name: Option<&str>,
) -> Result<Input, SecurityDefError> {
    let obj = input.as_object_mut().ok_or(SecurityDefError::NotAnObject)?;
    let plain =
        |obj: &mut serde_json::Map<String, serde_json::Value>, field: &'static str| match obj
            .remove(field)
        {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(Some(s)),
            Some(_) => Err(SecurityDefError::NotAString(field)),
        };
    let password = plain(obj, "password")?;
    let api_key = plain(obj, "key")?;
    let secret = plain(obj, "secret")?;
    if obj.contains_key("sealed") && (password.is_some() || api_key.is_some() || secret.is_some()) {
        return Err(SecurityDefError::SealedAndPlain);
    }
    if let Some(n) = name {
        match obj.get("name") {
            None => {
                obj.insert("name".into(), n.into());
            }
            Some(v) if v == n => {}
            Some(_) => return Err(SecurityDefError::OtherName(n.to_owned())),
        }
    }
    let def: SecurityDef =
        serde_json::from_value(input).map_err(|e| SecurityDefError::Shape(e.to_string()))?;
    validate_name(&def.name)?;
    let plain = match def.kind {
        SecurityType::Basic => {
            if api_key.is_some() || secret.is_some() {
                return Err(SecurityDefError::BasicTakesPassword);
            }
            password
        }
        SecurityType::Apikey => {
            if password.is_some() || secret.is_some() {
                return Err(SecurityDefError::ApikeyTakesKey);
            }
            api_key
        }
        SecurityType::Jwt => {
            if password.is_some() || api_key.is_some() {
                return Err(SecurityDefError::JwtTakesSecret);
            }
            secret
        }
    };
    Ok(Input { def, plain })
}

/// Whether a definition holds sealed material: all but JWT with public-key algorithms.
pub fn takes_secret(def: &SecurityDef) -> bool {
    def.kind != SecurityType::Jwt || def.algorithms.iter().any(|a| a.starts_with("HS"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn input_is_parsed_and_its_plaintext_kept_apart() {
        let i = parse_input(json!({"type": "apikey", "key": "k1"}), Some("a")).unwrap();
        assert_eq!((i.def.name.as_str(), i.plain.as_deref()), ("a", Some("k1")));
        assert!(i.def.sealed.is_none());
        let e = |v: serde_json::Value, name: Option<&str>| {
            parse_input(v, name).unwrap_err().to_string()
        };
        assert_eq!(
            e(json!({"name": "b", "type": "basic", "key": "p"}), None),
            "a basic definition takes a password, not key or secret"
        );
        assert_eq!(
            e(json!({"name": "x", "type": "apikey"}), Some("y")),
            "the body names another definition than y"
        );
        assert_eq!(
            e(json!({"name": "a", "type": "apikey", "key": ""}), None),
            "key must be a non-empty string"
        );
        assert!(
            e(json!({"name": "bad name", "type": "apikey"}), None)
                .starts_with("\"bad name\" is not a valid security definition name")
        );
        assert!(e(json!({"name": "a", "type": "soap"}), None).starts_with("expected {\"name\""));
    }

    #[test]
    fn public_json_hides_the_sealed_material() {
        let d = parse_input(
            json!({"name": "a", "type": "apikey", "sealed": "oxbus1:x"}),
            None,
        )
        .unwrap()
        .def;
        let v = public_json(&d);
        assert!(v.get("sealed").is_none());
        assert_eq!(v["has_secret"], true);
        assert_eq!(seal_name("a"), "security/a");
    }
}
