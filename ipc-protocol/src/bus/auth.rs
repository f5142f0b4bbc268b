//! Mutual authentication by a shared cluster secret that never travels: the handshake key,
//! the transcript both proofs are computed over, the proofs themselves and the nonces.
//! `BUS.md` ("Authentication") defines every byte.

use super::{Error, Result, Role};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The domain-separation label of protocol version 1: the HKDF salt of the key and the
/// first field of every transcript.
pub const LABEL: &str = "oxbus-bus-v1";

/// The HKDF `info` of the handshake key.
pub const KEY_INFO: &str = "oxbus-bus-v1 handshake";

/// The shortest cluster secret a server accepts, in bytes.
pub const MIN_SECRET_LEN: usize = 32;

/// The length of a nonce and of a proof, in bytes (64 hex digits on the wire).
pub const NONCE_LEN: usize = 32;

/// A nonce or proof that is not exactly 64 lower-case hex digits; `what` names which.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{what} must be 64 lower-case hex digits")]
pub struct HexError {
    pub what: &'static str,
}

/// 32 random bytes that one side contributes to one handshake; lower-case hex on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Nonce(pub [u8; NONCE_LEN]);

impl Nonce {
    /// A fresh nonce from the operating system's random source. There is no fallback: a
    /// handshake without real randomness would be replayable.
    pub fn random() -> Result<Nonce> {
        let mut n = [0u8; NONCE_LEN];
        getrandom::fill(&mut n).map_err(|e| Error::Random(e.to_string()))?;
        Ok(Nonce(n))
    }
}

/// An HMAC-SHA256 proof of the cluster secret; lower-case hex on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Proof(pub [u8; 32]);

macro_rules! hex_newtype {
    ($t:ident, $what:literal) => {
        impl $t {
            /// Lower-case hex, as on the wire.
            pub fn to_hex(&self) -> String {
                to_hex(&self.0)
            }

            /// Parses exactly 64 lower-case hex digits.
            pub fn from_hex(s: &str) -> std::result::Result<$t, HexError> {
                from_hex32(s).map($t).ok_or(HexError { what: $what })
            }
        }

        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, concat!(stringify!($t), "({})"), self.to_hex())
            }
        }

        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<$t, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                $t::from_hex(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

hex_newtype!(Nonce, "a nonce");
hex_newtype!(Proof, "a proof");

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

fn from_hex32(s: &str) -> Option<[u8; 32]> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        *o = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes a key of any length");
    for p in parts {
        mac.update(p);
    }
    mac
}

/// HKDF-SHA256 (RFC 5869) with an output of one block (32 bytes): extract then expand.
pub(crate) fn hkdf_sha256(salt: &[u8], ikm: &[u8], info: &[u8]) -> [u8; 32] {
    let prk = hmac(salt, &[ikm]).finalize().into_bytes();
    hmac(&prk, &[info, &[1]]).finalize().into_bytes().into()
}

/// Refuses a cluster secret shorter than [`MIN_SECRET_LEN`] bytes. The handshake key is a
/// plain hash of the secret (no password stretching), and a passive observer of one
/// handshake can test guesses offline, so the secret must be long and random.
pub fn check_secret(secret: &[u8]) -> Result<()> {
    if secret.len() < MIN_SECRET_LEN {
        return Err(Error::WeakSecret {
            len: secret.len(),
            min: MIN_SECRET_LEN,
        });
    }
    Ok(())
}

/// The handshake key of a cluster secret: HKDF-SHA256 with salt [`LABEL`], input key
/// material `secret` (its bytes exactly as configured) and info [`KEY_INFO`], 32 bytes.
pub fn derive_key(secret: &[u8]) -> [u8; 32] {
    hkdf_sha256(LABEL.as_bytes(), secret, KEY_INFO.as_bytes())
}

/// What one handshake binds: the cluster, both servers and both nonces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exchange<'a> {
    pub cluster: &'a str,
    pub dialer: &'a str,
    pub acceptor: &'a str,
    pub dialer_nonce: &'a Nonce,
    pub acceptor_nonce: &'a Nonce,
}

/// The bytes the proof of `role` is computed over: seven length-prefixed fields (a u32
/// big-endian byte count, then the bytes) — [`LABEL`], the role (`dialer` / `acceptor`),
/// the cluster name, the dialer's name, the acceptor's name, the dialer's nonce, the
/// acceptor's nonce (the nonces as 32 raw bytes). Only the role differs between the two
/// proofs of one handshake.
pub fn transcript(role: Role, x: &Exchange<'_>) -> Vec<u8> {
    let fields: [&[u8]; 7] = [
        LABEL.as_bytes(),
        role.as_str().as_bytes(),
        x.cluster.as_bytes(),
        x.dialer.as_bytes(),
        x.acceptor.as_bytes(),
        &x.dialer_nonce.0,
        &x.acceptor_nonce.0,
    ];
    let mut out = Vec::with_capacity(fields.iter().map(|f| 4 + f.len()).sum());
    for f in fields {
        let len = u32::try_from(f.len()).expect("transcript fields are short");
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(f);
    }
    out
}

/// The proof that the side in `role` knows the cluster secret:
/// HMAC-SHA256(`key`, [`transcript`]`(role, x)`).
pub fn proof(key: &[u8; 32], role: Role, x: &Exchange<'_>) -> Proof {
    Proof(
        hmac(key, &[&transcript(role, x)])
            .finalize()
            .into_bytes()
            .into(),
    )
}

/// Whether `proof` is the proof of `role` for this exchange, compared in constant time.
#[must_use]
pub fn verify(key: &[u8; 32], role: Role, x: &Exchange<'_>, proof: &Proof) -> bool {
    hmac(key, &[&transcript(role, x)])
        .verify_slice(&proof.0)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn hkdf_matches_rfc_5869_test_cases_1_and_3() {
        // Test case 1: the first 32 bytes of its 42-byte OKM are T(1), our whole output.
        let okm = hkdf_sha256(
            &unhex("000102030405060708090a0b0c"),
            &[0x0b; 22],
            &unhex("f0f1f2f3f4f5f6f7f8f9"),
        );
        assert_eq!(
            to_hex(&okm),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
        );
        // Test case 3: empty salt and info.
        let okm = hkdf_sha256(&[], &[0x0b; 22], &[]);
        assert_eq!(
            to_hex(&okm),
            "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d"
        );
    }

    #[test]
    fn hex_is_strict() {
        let n = Nonce([0xab; 32]);
        assert_eq!(Nonce::from_hex(&n.to_hex()), Ok(n));
        assert!(Nonce::from_hex(&n.to_hex().to_uppercase()).is_err());
        assert!(Nonce::from_hex(&n.to_hex()[2..]).is_err());
        assert!(Nonce::from_hex(&format!("{}00", n.to_hex())).is_err());
        assert!(Nonce::from_hex(&"zz".repeat(32)).is_err());
        assert!(Proof::from_hex("").is_err());
        assert_eq!(format!("{n:?}"), format!("Nonce({})", "ab".repeat(32)));
    }

    #[test]
    fn random_nonces_differ() {
        let a = Nonce::random().unwrap();
        let b = Nonce::random().unwrap();
        assert_ne!(a, b);
        assert_ne!(a.0, [0u8; 32]);
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(check_secret(&[7; 32]).is_ok());
        assert_eq!(
            check_secret(b"hunter2"),
            Err(Error::WeakSecret { len: 7, min: 32 })
        );
    }

    #[test]
    fn transcript_layout() {
        let (d, a) = (Nonce([1; 32]), Nonce([2; 32]));
        let x = Exchange {
            cluster: "c",
            dialer: "ab",
            acceptor: "b",
            dialer_nonce: &d,
            acceptor_nonce: &a,
        };
        let t = transcript(Role::Acceptor, &x);
        let mut want = Vec::new();
        for f in [
            &b"oxbus-bus-v1"[..],
            b"acceptor",
            b"c",
            b"ab",
            b"b",
            &[1; 32],
            &[2; 32],
        ] {
            want.extend_from_slice(&(f.len() as u32).to_be_bytes());
            want.extend_from_slice(f);
        }
        assert_eq!(t, want);
    }
}
