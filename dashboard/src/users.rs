//! The dashboard's users: a JSON file (0600) of names, roles, argon2id password hashes and
//! each user's admin API token, sealed under a key derived from that user's password.
//!
//! A dashboard user *is* an admin API identity: `oxbus dashboard user add alice --role
//! deployer` creates the API token `dashboard.alice` with role `deployer` through the admin
//! API and keeps it here sealed (XChaCha20-Poly1305 under an argon2id key of the password,
//! with its own salt; the user's name is the associated data). At sign-in the password is
//! checked against its hash, the key derived and the token opened; the session holds the
//! token in memory and every page calls the API with it. So the file alone opens nothing,
//! the servers' role checks apply to every action (the dashboard's own checks only hide
//! what a role may not do), and the audit log names the user (`dashboard.alice`).
//!
//! The file is read at every sign-in: a user added or removed while the dashboard runs
//! counts at once (a removed user's token is revoked on the servers, which ends their
//! sessions' access at their next request).

use argon2::Argon2;
use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

/// What a user may do; the same three roles, in the same order, as the admin API's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Deployer,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Deployer => "deployer",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        [Role::Viewer, Role::Deployer, Role::Admin]
            .into_iter()
            .find(|r| r.as_str() == s)
    }

    /// Whether this role may do what needs `needed`.
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }
}

/// The prefix of the admin API token names of dashboard users.
pub const TOKEN_PREFIX: &str = "dashboard.";

/// One user as the file keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub role: Role,
    /// argon2id PHC string of the password.
    pub password_hash: String,
    /// Hex: the salt of the key that seals the token (not the hash's salt).
    pub key_salt: String,
    /// Hex: nonce (24 bytes) then ciphertext and tag.
    pub sealed_token: String,
    pub created_at_ms: i64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Users {
    pub users: Vec<User>,
}

#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("cannot read the users file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the users file {path} is not valid: {message}")]
    Invalid { path: String, message: String },
    #[error("cannot write the users file {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// Checks a user name: 1-64 letters, digits, `.`, `_`, `-` (it becomes part of a token name).
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:.70?} is not a valid user name (1-64 characters: letters, digits, ._-)"
        ))
    }
}

/// The shortest password `user add` accepts.
pub const MIN_PASSWORD: usize = 12;

impl Users {
    /// The file at `path`; no file is no users.
    pub fn load(path: &Path) -> Result<Users, UsersError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Users::default()),
            Err(source) => {
                return Err(UsersError::Read {
                    path: path.display().to_string(),
                    source,
                });
            }
        };
        serde_json::from_str(&text).map_err(|e| UsersError::Invalid {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// Writes the file whole (a new temporary file of its own renamed over it), mode 0600.
    /// Writers take [`Users::update`]'s lock first.
    fn save(&self, path: &Path) -> Result<(), UsersError> {
        use std::os::unix::fs::OpenOptionsExt;
        let err = |source| UsersError::Write {
            path: path.display().to_string(),
            source,
        };
        let tmp = path.with_extension(format!("json.{}.tmp", hex(&random::<8>())));
        let text = serde_json::to_string_pretty(self).expect("users serialize");
        let written = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written.map_err(err)
    }

    /// Reads the file, lets `change` change the list and writes it back, holding an
    /// exclusive lock (`path`.lock) throughout: two writers (two `user add`, or one and
    /// quickstart) never lose each other's users.
    pub fn update<T>(path: &Path, change: impl FnOnce(&mut Users) -> T) -> Result<T, UsersError> {
        use std::os::unix::fs::OpenOptionsExt;
        let lock_path = path.with_extension("json.lock");
        let lock = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|source| UsersError::Write {
                path: lock_path.display().to_string(),
                source,
            })?;
        lock.lock().map_err(|source| UsersError::Write {
            path: lock_path.display().to_string(),
            source,
        })?;
        let mut users = Users::load(path)?;
        let out = change(&mut users);
        users.save(path)?;
        Ok(out)
    }

    pub fn get(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }

    /// Adds `user`, replacing one of the same name.
    pub fn put(&mut self, user: User) {
        self.users.retain(|u| u.name != user.name);
        self.users.push(user);
        self.users.sort_by(|a, b| a.name.cmp(&b.name));
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
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

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).unwrap_or_else(|e| panic!("the OS random source failed: {e}"));
    b
}

/// The associated data of a sealed token: the user's name and role, so that neither can be
/// changed in the file without the token no longer opening.
fn aad(name: &str, role: Role) -> Vec<u8> {
    format!("{name}\n{}", role.as_str()).into_bytes()
}

/// The sealing key of `password` under `salt` (argon2id, the crate's default parameters).
fn derive_key(password: &str, salt: &[u8]) -> Result<[u8; 32], UsersError> {
    let mut key = [0u8; 32];
    Argon2::default()
        .hash_password_into(password.as_bytes(), salt, &mut key)
        .map_err(|e| UsersError::Hash(e.to_string()))?;
    Ok(key)
}

impl User {
    /// A new user whose password seals `token` (slow: two argon2 runs; off async threads).
    pub fn new(name: &str, role: Role, password: &str, token: &str) -> Result<User, UsersError> {
        use argon2::password_hash::{PasswordHasher, SaltString};
        let salt =
            SaltString::encode_b64(&random::<16>()).map_err(|e| UsersError::Hash(e.to_string()))?;
        let password_hash = Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map_err(|e| UsersError::Hash(e.to_string()))?
            .to_string();
        let key_salt = random::<16>();
        let key = derive_key(password, &key_salt)?;
        let nonce = random::<24>();
        let ct = XChaCha20Poly1305::new(&key.into())
            .encrypt(
                &nonce.into(),
                Payload {
                    msg: token.as_bytes(),
                    aad: &aad(name, role),
                },
            )
            .expect("sealing an in-memory buffer cannot fail");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Ok(User {
            name: name.to_owned(),
            role,
            password_hash,
            key_salt: hex(&key_salt),
            sealed_token: format!("{}{}", hex(&nonce), hex(&ct)),
            created_at_ms: now,
        })
    }

    /// The user's admin API token when `password` is theirs (slow: two argon2 runs).
    pub fn open(&self, password: &str) -> Option<String> {
        use argon2::password_hash::PasswordVerifier;
        let hash = argon2::PasswordHash::new(&self.password_hash).ok()?;
        Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .ok()?;
        let key = derive_key(password, &unhex(&self.key_salt)?).ok()?;
        let sealed = unhex(&self.sealed_token)?;
        if sealed.len() < 24 {
            return None;
        }
        let (nonce, ct) = sealed.split_at(24);
        let nonce: [u8; 24] = nonce.try_into().ok()?;
        let plain = XChaCha20Poly1305::new(&key.into())
            .decrypt(
                &nonce.into(),
                Payload {
                    msg: ct,
                    aad: &aad(&self.name, self.role),
                },
            )
            .ok()?;
        String::from_utf8(plain).ok()
    }
}

/// A random password for a new user: 20 characters of an unambiguous alphabet (~115 bits).
pub fn generate_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    random::<20>()
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_opens_with_the_password_only() {
        let u = User::new(
            "alice",
            Role::Deployer,
            "correct horse battery",
            "oxbus_abc",
        )
        .unwrap();
        assert_eq!(
            u.open("correct horse battery").as_deref(),
            Some("oxbus_abc")
        );
        assert_eq!(u.open("wrong horse battery"), None);
        // The sealed token is bound to the name and the role.
        let mut renamed = u.clone();
        renamed.name = "mallory".into();
        assert_eq!(renamed.open("correct horse battery"), None);
        let mut promoted = u.clone();
        promoted.role = Role::Admin;
        assert_eq!(promoted.open("correct horse battery"), None);
        assert!(!u.sealed_token.contains("oxbus_abc"));
    }

    #[test]
    fn names_and_roles() {
        assert!(validate_name("ops.alice-1").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("a b").is_err());
        assert!(Role::Admin.allows(Role::Deployer));
        assert!(!Role::Viewer.allows(Role::Deployer));
        assert_eq!(Role::parse("deployer"), Some(Role::Deployer));
        assert_eq!(generate_password().len(), 20);
    }

    #[test]
    fn the_file_round_trips_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("oxdash-users-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("users.json");
        assert!(Users::load(&path).unwrap().users.is_empty());
        let bob = User::new("bob", Role::Viewer, "pw-pw-pw-pw-pw", "t").unwrap();
        Users::update(&path, |u| u.put(bob)).unwrap();
        let back = Users::load(&path).unwrap();
        assert_eq!(back.get("bob").unwrap().role, Role::Viewer);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
