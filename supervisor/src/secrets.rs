//! Secrets at rest: every secret value in the config store is sealed with XChaCha20-Poly1305
//! under a 256-bit key that lives outside the store.
//!
//! The key comes from a systemd credential (`$CREDENTIALS_DIRECTORY/oxbus-secret-key`, e.g.
//! `LoadCredentialEncrypted=oxbus-secret-key:…`) when there is one, else from the key file
//! named in server.toml (`store.key_file`, default `secret.key` beside it; created 0600 with a
//! random key when missing and the store holds no secret yet). Both hold 64 hex characters.
//!
//! A sealed value is `oxbus1:<key id>:<nonce>:<ciphertext+tag>` (hex), where the key id is the
//! first 8 bytes of SHA-256 of the key, so a value sealed under another key is refused with a
//! message naming both ids instead of a bare "decryption failed". The secret's name is the
//! associated data: a sealed value copied onto another name does not open.
//!
//! Plaintext never leaves this module except to the caller that asked for it; `Plain` does not
//! print its contents in `Debug`.
//!
//! Random values come from `random` (the OS generator). This module knows no other module
//! of the crate but that one.

use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::aead::{Aead, Generate, KeyInit, Payload};
use sha2::{Digest, Sha256};
use std::io;
use std::path::{Path, PathBuf};

/// The systemd credential name the key is read from when present.
pub const CREDENTIAL: &str = "oxbus-secret-key";

const PREFIX: &str = "oxbus1";

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read the secret key {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot create the secret key {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("the secret key {0} must hold 64 hex characters (32 bytes)")]
    BadKey(PathBuf),
    #[error(
        "the secret key {0} is missing but the config store holds secrets sealed with key {1}: \
         restore that key file (or the systemd credential {CREDENTIAL}); a new key cannot open them"
    )]
    Missing(PathBuf, String),
    #[error("secret {name} was sealed with key {sealed_with}, the loaded key is {loaded}")]
    WrongKey {
        name: String,
        sealed_with: String,
        loaded: String,
    },
    #[error("secret {0} does not open: it was altered or belongs to another name")]
    Tampered(String),
    #[error("secret {0}: not a sealed value (expected oxbus1:<key>:<nonce>:<data>)")]
    Malformed(String),
}

/// A secret's plaintext; `Debug` shows only its length.
#[derive(Clone, PartialEq, Eq)]
pub struct Plain(String);

impl Plain {
    pub fn new(s: String) -> Plain {
        Plain(s)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Plain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Plain(<{} bytes>)", self.0.len())
    }
}

/// The loaded key.
#[derive(Clone)]
pub struct Key {
    cipher: XChaCha20Poly1305,
    id: String,
    /// Where it came from, for the log.
    pub source: PathBuf,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key(id {}, from {})", self.id, self.source.display())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The key id of a sealed value, if it is one.
pub fn sealed_key_id(sealed: &str) -> Option<&str> {
    let mut parts = sealed.split(':');
    (parts.next()? == PREFIX).then_some(())?;
    parts.next()
}

impl Key {
    fn from_bytes(bytes: &[u8; 32], source: PathBuf) -> Key {
        let id = hex(&Sha256::digest(bytes)[..8]);
        let cipher = XChaCha20Poly1305::new(bytes.into());
        Key { cipher, id, source }
    }

    /// Reads a key file: 64 hex characters, surrounding whitespace ignored.
    pub fn read(path: &Path) -> Result<Key, SecretError> {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                file = %path.display(),
                mode = format!("{:o}", meta.permissions().mode() & 0o777),
                "the secret key file is readable by others than its owner: chmod 600 it"
            );
        }
        let text = std::fs::read_to_string(path).map_err(|source| SecretError::Read {
            path: path.to_owned(),
            source,
        })?;
        let bytes = unhex(text.trim())
            .and_then(|v| <[u8; 32]>::try_from(v).ok())
            .ok_or_else(|| SecretError::BadKey(path.to_owned()))?;
        Ok(Key::from_bytes(&bytes, path.to_owned()))
    }

    /// Creates a key file (mode 0600, never overwriting) with a random key.
    pub fn create(path: &Path) -> Result<Key, SecretError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let bytes: [u8; 32] = chacha20poly1305::Key::generate().into();
        let err = |source| SecretError::Create {
            path: path.to_owned(),
            source,
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(err)?;
        writeln!(f, "{}", hex(&bytes)).map_err(err)?;
        f.sync_all().map_err(err)?;
        Ok(Key::from_bytes(&bytes, path.to_owned()))
    }

    /// The key for a server: the systemd credential when `credentials_dir` holds one, else
    /// `key_file`; a missing key file is created only when the store holds no sealed secret
    /// (`stored_key_id` is the key id of one that it holds).
    pub fn load(
        credentials_dir: Option<&Path>,
        key_file: &Path,
        stored_key_id: Option<&str>,
    ) -> Result<Key, SecretError> {
        if let Some(dir) = credentials_dir {
            let cred = dir.join(CREDENTIAL);
            if cred.exists() {
                return Key::read(&cred);
            }
            tracing::warn!(
                credentials = %dir.display(),
                "no systemd credential {CREDENTIAL}: using the key file {}",
                key_file.display()
            );
        }
        if key_file.exists() {
            return Key::read(key_file);
        }
        match stored_key_id {
            Some(id) => Err(SecretError::Missing(key_file.to_owned(), id.to_owned())),
            None => Key::create(key_file),
        }
    }

    /// Short fingerprint of the key (not secret: 8 bytes of its SHA-256).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Seals `plain` for the secret `name`.
    pub fn seal(&self, name: &str, plain: &str) -> String {
        let nonce = chacha20poly1305::XNonce::generate();
        let ct = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plain.as_bytes(),
                    aad: name.as_bytes(),
                },
            )
            .expect("XChaCha20-Poly1305 encryption of an in-memory buffer cannot fail");
        format!("{PREFIX}:{}:{}:{}", self.id, hex(&nonce), hex(&ct))
    }

    /// Opens a value sealed for `name`.
    pub fn open(&self, name: &str, sealed: &str) -> Result<Plain, SecretError> {
        let malformed = || SecretError::Malformed(name.to_owned());
        let parts: Vec<&str> = sealed.split(':').collect();
        let [prefix, key_id, nonce, ct] = parts.as_slice() else {
            return Err(malformed());
        };
        if *prefix != PREFIX {
            return Err(malformed());
        }
        if *key_id != self.id {
            return Err(SecretError::WrongKey {
                name: name.to_owned(),
                sealed_with: (*key_id).to_owned(),
                loaded: self.id.clone(),
            });
        }
        let nonce = unhex(nonce)
            .and_then(|n| <[u8; 24]>::try_from(n).ok())
            .ok_or_else(malformed)?;
        let ct = unhex(ct).ok_or_else(malformed)?;
        let plain = self
            .cipher
            .decrypt(
                &nonce.into(),
                Payload {
                    msg: &ct,
                    aad: name.as_bytes(),
                },
            )
            .map_err(|_| SecretError::Tampered(name.to_owned()))?;
        String::from_utf8(plain)
            .map(Plain)
            .map_err(|_| SecretError::Tampered(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(dir: &Path, file: &str) -> Key {
        Key::create(&dir.join(file)).unwrap()
    }

    fn tmp() -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("oxbus-secrets-{}", crate::random::random_hex(8)));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn seal_open_round_trip_and_no_plaintext() {
        let d = tmp();
        let k = key(&d, "k");
        let sealed = k.seal("crm.password", "hunter2-very-secret");
        assert!(!sealed.contains("hunter2"));
        assert!(sealed.starts_with(&format!("oxbus1:{}:", k.id())));
        assert_eq!(
            k.open("crm.password", &sealed).unwrap().expose(),
            "hunter2-very-secret"
        );
        // A fresh nonce each time: the same value seals differently.
        assert_ne!(sealed, k.seal("crm.password", "hunter2-very-secret"));
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn another_name_another_key_or_a_flipped_bit_does_not_open() {
        let d = tmp();
        let k = key(&d, "k");
        let other = key(&d, "other");
        let sealed = k.seal("a", "value");
        assert!(matches!(
            k.open("b", &sealed),
            Err(SecretError::Tampered(_))
        ));
        assert!(matches!(
            other.open("a", &sealed),
            Err(SecretError::WrongKey { .. })
        ));
        let mut bytes = sealed.into_bytes();
        let last = bytes.len() - 1;
        bytes[last] = if bytes[last] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(bytes).unwrap();
        assert!(matches!(
            k.open("a", &flipped),
            Err(SecretError::Tampered(_))
        ));
        assert!(matches!(
            k.open("a", "plain text"),
            Err(SecretError::Malformed(_))
        ));
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn key_file_is_0600_reloads_to_the_same_key_and_is_never_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let d = tmp();
        let path = d.join("secret.key");
        let k = Key::load(None, &path, None).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = Key::load(None, &path, None).unwrap();
        assert_eq!(k.id(), again.id());
        assert!(Key::create(&path).is_err());
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_missing_key_is_not_recreated_when_the_store_has_sealed_secrets() {
        let d = tmp();
        let err = Key::load(None, &d.join("gone.key"), Some("0123456789abcdef")).unwrap_err();
        assert!(err.to_string().contains("0123456789abcdef"), "{err}");
        assert!(!d.join("gone.key").exists());
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn the_systemd_credential_wins_over_the_key_file() {
        let d = tmp();
        let cred = key(&d, CREDENTIAL);
        let file = key(&d, "secret.key");
        let loaded = Key::load(Some(&d), &d.join("secret.key"), None).unwrap();
        assert_eq!(loaded.id(), cred.id());
        assert_ne!(loaded.id(), file.id());
        std::fs::write(d.join("bad.key"), "not hex").unwrap();
        assert!(matches!(
            Key::read(&d.join("bad.key")),
            Err(SecretError::BadKey(_))
        ));
        std::fs::remove_dir_all(d).unwrap();
    }
}
