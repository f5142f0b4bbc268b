//! The on-disk snapshot of the config a server runs: what it boots from when the config store
//! is down (a PostgreSQL outage must not stop a restarted server from serving).
//!
//! One file, `store.snapshot_file` (default `snapshot.json` beside server.toml), rewritten
//! whenever the server has applied a new config version, and at the same version when the
//! store's server list changes (a server joined or left: `sync::peers_seen`), so that the
//! peers it lists are the ones of the cluster now. Written to a temporary file in the
//! same directory, fsynced, renamed over the old one and the directory fsynced, so a crash
//! leaves either the old or the new snapshot, never a mix. The first line is
//! `oxbus-snapshot 1 sha256=<hex of the rest>`; the rest is JSON. A snapshot whose checksum or
//! format does not match is refused: with the store down that is a configuration error, not
//! a guess. Secrets are in it sealed, as in the store.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::model::channel::Channel;
use crate::model::object::ObjectSet;
use crate::store::{Module, SealedSecret, Store, StoreError};

const MAGIC: &str = "oxbus-snapshot 1";

/// Everything a server needs from the store to serve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub config_version: i64,
    /// Unix milliseconds.
    pub written_at: i64,
    pub channels: Vec<Channel>,
    pub modules: Vec<Module>,
    pub secrets: Vec<SealedSecret>,
    /// The JSON-defined objects, at this level of the JSON (`security`, `caches`, `jobs`),
    /// each absent in snapshots of older versions.
    #[serde(flatten)]
    pub objects: ObjectSet,
    /// The servers with a cluster bus as the store last listed them (this one among them),
    /// kept up to date as servers join and leave: a server restarted while the store is down
    /// dials its peers from here. Absent in snapshots of older versions.
    #[serde(default)]
    pub peers: Vec<BusPeer>,
}

/// A server of the cluster and where its bus listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BusPeer {
    pub name: String,
    pub bus_address: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("no snapshot at {0}")]
    Missing(PathBuf),
    #[error("cannot read the snapshot {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("the snapshot {path} is corrupt ({reason}); it is not used")]
    Corrupt { path: PathBuf, reason: String },
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Snapshot {
    /// Reads the store's current config in one consistent view (the caller holds the deploy
    /// lock, so no change of this server's lands in between).
    pub async fn take(store: &Store) -> Result<Snapshot, StoreError> {
        let config_version = store.version().await?;
        Ok(Snapshot {
            config_version,
            written_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
            channels: store.channels().await?,
            modules: store.active_modules().await?,
            secrets: store.secrets().await?,
            objects: store.object_set().await?,
            peers: store
                .servers()
                .await?
                .into_iter()
                .filter_map(|s| {
                    Some(BusPeer {
                        bus_address: s.bus_address?,
                        name: s.name,
                    })
                })
                .collect(),
        })
    }

    /// Writes the snapshot atomically (temp file, fsync, rename, fsync of the directory).
    pub fn write(&self, path: &Path) -> io::Result<()> {
        let body = serde_json::to_vec(self).map_err(io::Error::other)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(format!(
            ".{}.tmp-{}",
            path.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("snapshot"),
            std::process::id()
        ));
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            writeln!(f, "{MAGIC} sha256={}", hex(&Sha256::digest(&body)))?;
            f.write_all(&body)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    }

    /// Reads and checks a snapshot.
    pub fn read(path: &Path) -> Result<Snapshot, SnapshotError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SnapshotError::Missing(path.to_owned()));
            }
            Err(source) => {
                return Err(SnapshotError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let corrupt = |reason: &str| SnapshotError::Corrupt {
            path: path.to_owned(),
            reason: reason.to_owned(),
        };
        let nl = bytes
            .iter()
            .position(|b| *b == b'\n')
            .ok_or_else(|| corrupt("no header line"))?;
        let header = std::str::from_utf8(&bytes[..nl]).map_err(|_| corrupt("bad header"))?;
        let sum = header
            .strip_prefix(MAGIC)
            .and_then(|rest| rest.trim().strip_prefix("sha256="))
            .ok_or_else(|| corrupt("not an oxbus snapshot of format 1"))?;
        let body = &bytes[nl + 1..];
        if hex(&Sha256::digest(body)) != sum {
            return Err(corrupt("checksum mismatch"));
        }
        serde_json::from_slice(body).map_err(|e| corrupt(&format!("unreadable: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        Snapshot {
            config_version: 7,
            written_at: 1,
            channels: vec![Channel {
                name: Some("/a".into()),
                url_path: "/a".into(),
                methods: vec!["GET".into()],
                service: "s".into(),
                data_format: crate::model::channel::DataFormat::Raw,
                security: Some("b".into()),
                allow_from: vec!["10.0.0.0/8".into()],
                rate_limit: Some(crate::model::channel::RateLimit {
                    requests: 5,
                    per_s: 1,
                    burst: None,
                }),
                channel_type: crate::model::channel::ChannelType::Rest,
                services: Vec::new(),
                websocket: None,
                params_priority: None,
            }],
            modules: vec![Module {
                name: "m".into(),
                version: 3,
                source: "x = 1\n".into(),
                source_hash: crate::store::source_hash("x = 1\n"),
                deployed_by: "t".into(),
                deployed_at: 2,
                active: true,
                origin: Some("/srv/m.py".into()),
            }],
            secrets: vec![SealedSecret {
                name: "s".into(),
                sealed: "oxbus1:k:n:c".into(),
                services: vec!["crm.*".into()],
                updated_by: "t".into(),
                updated_at: 3,
            }],
            objects: ObjectSet {
                security: vec![crate::model::security::SecurityDef {
                    name: "b".into(),
                    kind: crate::model::security::SecurityType::Basic,
                    username: Some("ann".into()),
                    realm: None,
                    header: None,
                    algorithms: Vec::new(),
                    issuer: None,
                    audience: None,
                    public_key: None,
                    jwks_file: None,
                    leeway_s: None,
                    rate_limit: None,
                    sealed: Some("oxbus1:k:n:c".into()),
                }],
                caches: vec![oxbus_cache::CacheDef {
                    max_entries: 50,
                    ..oxbus_cache::CacheDef::named("sessions")
                }],
                jobs: vec![crate::model::job::JobDef {
                    cron: Some("0 8 * * MON-FRI".into()),
                    timezone: Some("Europe/Warsaw".into()),
                    start_date: Some("2026-12-01T08:00:00+01:00".into()),
                    extra: Some(serde_json::json!({"report": "daily"})),
                    ..crate::model::job::JobDef::new(
                        "report",
                        crate::model::job::JobType::CronStyle,
                        "demo.report",
                    )
                }],
                outgoing_rest: vec![
                    serde_json::from_value(serde_json::json!({
                        "name": "crm",
                        "address": "https://crm.example.com",
                        "auth": {"type": "bearer", "sealed": "oxbus1:k:n:c"},
                    }))
                    .unwrap(),
                ],
                outgoing_sql: vec![
                    serde_json::from_value(serde_json::json!({
                        "name": "db",
                        "engine": "postgresql",
                        "url": "postgres://app@127.0.0.1/test",
                        "sealed": "oxbus1:k:n:c",
                    }))
                    .unwrap(),
                ],
                pubsub_topics: vec![
                    serde_json::from_value(serde_json::json!({"name": "/orders/new"})).unwrap(),
                ],
                pubsub_subs: vec![
                    serde_json::from_value(serde_json::json!({
                        "sub_key": "sk.1",
                        "topic": "/orders/*",
                        "delivery": {"type": "service", "service": "crm.orders"},
                    }))
                    .unwrap(),
                ],
                pubsub_endpoints: vec![
                    serde_json::from_value(serde_json::json!({
                        "name": "crm",
                        "security": "b",
                        "topic_patterns": ["pub=/orders/*"],
                    }))
                    .unwrap(),
                ],
                user_config: vec![crate::model::user_config::UserConfig {
                    name: "crm".into(),
                    description: Some("CRM client".into()),
                    value: serde_json::json!({"api": {"url": "https://crm", "retries": 3}}),
                }],
                ..Default::default()
            },
            peers: vec![BusPeer {
                name: "b".into(),
                bus_address: "10.0.0.2:7070".into(),
            }],
        }
    }

    fn tmp() -> PathBuf {
        let d = std::env::temp_dir().join(format!("oxbus-snap-{}", crate::random::random_hex(8)));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn round_trip_replaces_atomically_and_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tmp();
        let path = d.join("snapshot.json");
        assert!(matches!(
            Snapshot::read(&path),
            Err(SnapshotError::Missing(_))
        ));
        let mut s = sample();
        s.write(&path).unwrap();
        assert_eq!(Snapshot::read(&path).unwrap(), s);
        s.config_version = 8;
        s.write(&path).unwrap();
        assert_eq!(Snapshot::read(&path).unwrap().config_version, 8);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let left: Vec<_> = std::fs::read_dir(&d).unwrap().collect();
        assert_eq!(left.len(), 1, "no temp file left behind");
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_snapshot_of_an_older_version_without_caches_or_jobs_still_loads() {
        let d = tmp();
        let path = d.join("snapshot.json");
        let mut doc = serde_json::to_value(sample()).unwrap();
        doc.as_object_mut().unwrap().remove("caches");
        doc.as_object_mut().unwrap().remove("jobs");
        doc.as_object_mut().unwrap().remove("outgoing_rest");
        doc.as_object_mut().unwrap().remove("outgoing_sql");
        doc.as_object_mut().unwrap().remove("user_config");
        let body = serde_json::to_vec(&doc).unwrap();
        let mut text = format!("{MAGIC} sha256={}\n", hex(&Sha256::digest(&body))).into_bytes();
        text.extend_from_slice(&body);
        std::fs::write(&path, text).unwrap();
        let read = Snapshot::read(&path).unwrap();
        assert!(read.objects.caches.is_empty());
        assert!(read.objects.jobs.is_empty());
        assert!(read.objects.outgoing_rest.is_empty() && read.objects.outgoing_sql.is_empty());
        assert!(read.objects.user_config.is_empty());
        assert_eq!(read.objects.security, sample().objects.security);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_flipped_byte_or_a_foreign_file_is_corrupt() {
        let d = tmp();
        let path = d.join("snapshot.json");
        sample().write(&path).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 2;
        bytes[last] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let err = Snapshot::read(&path).unwrap_err();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
        std::fs::write(&path, "{}\n").unwrap();
        assert!(matches!(
            Snapshot::read(&path),
            Err(SnapshotError::Corrupt { .. })
        ));
        std::fs::remove_dir_all(d).unwrap();
    }
}
