//! Config export and import: every object of the config store as one document, one list per
//! object kind (the shape Zato users know from enmasse). The admin API speaks it as JSON at
//! `GET /v1/config` and `POST /v1/config`; `oxbus config export|import` turns it into YAML.
//!
//! An import is validated in full before anything is written — the channels must route
//! unambiguously beside server.toml's, every secret must be a plain value or a value sealed
//! with this server's key, and every changed module is imported in a worker first — and then
//! applied in one store transaction (one config version). It is idempotent: an object equal to
//! the stored one is left alone, so importing the same file twice changes nothing the second
//! time. With `replace`, stored objects the document does not list are deleted (modules
//! undeployed; a stored definition of the `default` cache is kept, since that cache always
//! exists). server.toml's channels are not part of the document: they live in the file.
//! A job that leaves `start_date` out keeps the stored job's (a new one starts when it is
//! created), so a document without start dates imports idempotently too.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

use crate::admin::Ctx;
use crate::deploy::{DeployError, Source, WorkerAck};
use crate::model::channel::{Channel, ChannelType};
use crate::model::job::JobDef;
use crate::model::object::ConfigObject;
use crate::model::security::SecurityDef;
use crate::store::{ObjectChanges, Plan};
use oxbus_cache::CacheDef;

/// The document's format version.
pub const FORMAT: u32 = 1;

/// The export/import document.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    /// Format version (1); optional on import.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oxbus_config: Option<u32>,
    /// The store's config version at export; informational, ignored on import.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_version: Option<i64>,
    #[serde(default)]
    pub channel_rest: Vec<Channel>,
    /// JSON-RPC channels (`type: jsonrpc` may be left out here). One name space with
    /// `channel_rest`: a name is listed in one of the two.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channel_jsonrpc: Vec<Channel>,
    /// A list of `{name, value}` (plain, sealed on import) or `{name, sealed}` (as exported).
    /// Kept as raw JSON and checked by hand, so that no parse error can quote a value.
    #[serde(default)]
    pub secret: Value,
    #[serde(default)]
    pub service_module: Vec<ModuleDoc>,
    /// Security definitions (docs/SECURITY.md): as exported, with `sealed` secret material;
    /// on import also with plaintext `password` / `key` / `secret`, hashed or sealed here.
    /// Raw JSON, checked by hand, for the same reason as `secret`.
    #[serde(default)]
    pub security: Value,
    /// Cache definitions (docs/CACHE.md), each checked field by field so that an error names
    /// the entry and the field.
    #[serde(default, deserialize_with = "cache_list")]
    pub cache: Vec<CacheDef>,
    /// Scheduler jobs (docs/SCHEDULER.md), each checked field by field like `cache`.
    #[serde(default, deserialize_with = "job_list")]
    pub job: Vec<JobDef>,
}

fn job_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<JobDef>, D::Error> {
    use serde::de::Error;
    match Value::deserialize(d)? {
        Value::Null => Ok(Vec::new()),
        Value::Array(list) => list
            .iter()
            .enumerate()
            .map(|(i, v)| {
                crate::model::job::parse_job_def(v, None)
                    .map_err(|e| D::Error::custom(format!("job[{i}]: {e}")))
            })
            .collect(),
        _ => Err(D::Error::custom("job: expected a list of job definitions")),
    }
}

fn cache_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<CacheDef>, D::Error> {
    use serde::de::Error;
    match Value::deserialize(d)? {
        Value::Null => Ok(Vec::new()),
        Value::Array(list) => list
            .iter()
            .enumerate()
            .map(|(i, v)| {
                parse_cache_def(v, None).map_err(|e| D::Error::custom(format!("cache[{i}]: {e}")))
            })
            .collect(),
        _ => Err(D::Error::custom(
            "cache: expected a list of cache definitions",
        )),
    }
}

/// A cache definition from JSON (an admin request's body, an entry of a document). Every
/// error names the field: unknown fields are listed, a field of the wrong type is named.
/// `path_name`: the name the request's URL gives; the body may leave `name` out, and must
/// not name another cache. Not validated here: see [`CacheDef::validate`].
pub fn parse_cache_def(v: &Value, path_name: Option<&str>) -> Result<CacheDef, String> {
    let Some(obj) = v.as_object() else {
        return Err("expected a JSON object of cache definition fields".into());
    };
    let name = match (obj.get("name"), path_name) {
        (Some(Value::String(n)), Some(p)) if n != p => {
            return Err(format!(
                "name: the body names cache {n:?}, the URL {p:?}: a cache cannot be renamed"
            ));
        }
        (Some(Value::String(n)), _) => n.clone(),
        (Some(_), _) => return Err("name: must be a string".into()),
        (None, Some(p)) => p.to_owned(),
        (None, None) => return Err("name: missing".into()),
    };
    let known = serde_json::to_value(CacheDef::builtin_default()).expect("a definition serialises");
    let known = known.as_object().expect("an object");
    let unknown: Vec<&str> = obj
        .keys()
        .map(String::as_str)
        .filter(|k| !known.contains_key(*k))
        .collect();
    if !unknown.is_empty() {
        return Err(format!(
            "cache {name}: unknown field(s) {} (a cache definition has {})",
            unknown.join(", "),
            known
                .keys()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    // Field by field, so that a value of the wrong type is reported with its field's name.
    for (k, value) in obj.iter().filter(|(k, _)| *k != "name") {
        let one = json!({"name": name, k.as_str(): value});
        if let Err(e) = serde_json::from_value::<CacheDef>(one) {
            return Err(format!("cache {name}: {k}: {e}"));
        }
    }
    let mut full = obj.clone();
    full.insert("name".into(), Value::String(name.clone()));
    serde_json::from_value(Value::Object(full)).map_err(|e| format!("cache {name}: {e}"))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModuleDoc {
    pub name: String,
    pub source: String,
}

/// One line of an import report.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub kind: &'static str,
    pub name: String,
    /// create | update | delete
    pub action: &'static str,
}

/// What an import did (or, with `dry_run`, would do).
#[derive(Debug, Serialize)]
pub struct Report {
    pub dry_run: bool,
    pub config_version: i64,
    pub changes: Vec<Change>,
    pub unchanged: usize,
    pub workers: Vec<WorkerAck>,
}

fn bad(msg: impl Into<String>) -> DeployError {
    DeployError::Invalid(msg.into())
}

fn unavailable(e: impl std::fmt::Display) -> DeployError {
    DeployError::Unavailable(e.to_string())
}

/// The store's objects as a document (channels in routing order, the rest by name; secrets
/// sealed). Taken under the deploy lock by the caller, so it is one consistent version.
pub async fn export(cx: &Ctx) -> Result<Document, DeployError> {
    let store = &cx.store;
    let config_version = store.version().await.map_err(unavailable)?;
    // Channels in creation order: parameterised routes are tried in that order.
    let (channel_jsonrpc, channels): (Vec<Channel>, Vec<Channel>) = store
        .channels()
        .await
        .map_err(unavailable)?
        .into_iter()
        .partition(|c| c.channel_type == ChannelType::JsonRpc);
    let secrets = store.secrets().await.map_err(unavailable)?;
    let modules = store.active_modules().await.map_err(unavailable)?;
    let objects = store.object_set().await.map_err(unavailable)?;
    Ok(Document {
        cache: objects.caches,
        job: objects.jobs,
        security: serde_json::to_value(objects.security).expect("definitions serialise"),
        oxbus_config: Some(FORMAT),
        config_version: Some(config_version),
        channel_rest: channels,
        channel_jsonrpc,
        secret: Value::Array(
            secrets
                .into_iter()
                .map(|s| json!({"name": s.name, "sealed": s.sealed}))
                .collect(),
        ),
        service_module: modules
            .into_iter()
            .map(|m| ModuleDoc {
                name: m.name,
                source: m.source,
            })
            .collect(),
    })
}

/// A secret entry of a document, parsed without ever quoting its value.
enum SecretIn {
    Plain(String),
    Sealed(String),
}

fn parse_secret(i: usize, v: &Value) -> Result<(String, SecretIn), DeployError> {
    let Some(obj) = v.as_object() else {
        return Err(bad(format!(
            "secret[{i}]: expected {{name, value}} or {{name, sealed}}"
        )));
    };
    let name = match obj.get("name") {
        Some(Value::String(n)) => n.clone(),
        _ => return Err(bad(format!("secret[{i}]: name must be a string"))),
    };
    if let Some(k) = obj
        .keys()
        .find(|k| !["name", "value", "sealed"].contains(&k.as_str()))
    {
        return Err(bad(format!("secret {name}: unknown field {k:?}")));
    }
    match (obj.get("value"), obj.get("sealed")) {
        (Some(Value::String(p)), None) => Ok((name, SecretIn::Plain(p.clone()))),
        (None, Some(Value::String(s))) => Ok((name, SecretIn::Sealed(s.clone()))),
        (Some(_), Some(_)) => Err(bad(format!(
            "secret {name}: give value or sealed, not both"
        ))),
        (None, None) => Err(bad(format!("secret {name}: value (or sealed) is missing"))),
        _ => Err(bad(format!("secret {name}: the value must be a string"))),
    }
}

/// The document list (and import report kind) a channel belongs to.
fn channel_kind(c: &Channel) -> &'static str {
    match c.channel_type {
        ChannelType::Rest => "channel_rest",
        ChannelType::JsonRpc => "channel_jsonrpc",
    }
}

fn duplicate<'a>(names: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let mut seen = BTreeSet::new();
    names.into_iter().find(|n| !seen.insert(*n))
}

/// Validates `doc` in full against the store and this server, then (unless `dry_run`) applies
/// it in one transaction and brings the workers and the routing table up to date. The caller
/// holds `cx.locks.deploy`.
/// Imports, in one worker under `deploy.check_timeout_ms`, the document's modules that
/// differ from the store's active versions; returns what was checked (name, source hash)
/// for [`import`]. Called before `deploy_lock` is taken: no lock is held while user code runs.
pub async fn check_modules(cx: &Ctx, doc: &Document) -> Result<Vec<(String, String)>, DeployError> {
    if let Some(d) = duplicate(doc.service_module.iter().map(|m| m.name.as_str())) {
        return Err(bad(format!("service_module: {d} is listed twice")));
    }
    for m in &doc.service_module {
        crate::store::validate_module_name(&m.name)
            .map_err(|e| bad(format!("service_module: {e}")))?;
    }
    let active = cx.store.active_modules().await.map_err(unavailable)?;
    let changed: Vec<_> = doc
        .service_module
        .iter()
        .filter(|m| {
            !active
                .iter()
                .any(|a| a.name == m.name && a.source_hash == crate::store::source_hash(&m.source))
        })
        .collect();
    if !changed.is_empty() {
        let srcs: Vec<Source<'_>> = changed
            .iter()
            .map(|m| Source {
                name: &m.name,
                version: 0,
                source: &m.source,
            })
            .collect();
        crate::deploy::checked(&cx.deploy, &srcs).await?;
    }
    Ok(changed
        .iter()
        .map(|m| (m.name.clone(), crate::store::source_hash(&m.source)))
        .collect())
}

/// Applies `doc`. `checked` is what [`check_modules`] imported beforehand: a module to
/// deploy that is not in it (the store changed in between) refuses the import (409) rather
/// than run user code here, under the caller's lock.
pub async fn import(
    cx: &Ctx,
    doc: Document,
    dry_run: bool,
    replace: bool,
    by: &str,
    checked: &[(String, String)],
) -> Result<Report, DeployError> {
    if let Some(f) = doc.oxbus_config.filter(|f| *f != FORMAT) {
        return Err(bad(format!(
            "oxbus_config: {f} is not a format this server reads (it reads {FORMAT})"
        )));
    }
    let store = &cx.store;
    let mut plan = Plan::default();
    let mut changes = Vec::new();
    let mut unchanged = 0usize;

    // Channels: named (default: the URL path), unique, routing unambiguously beside the file's.
    // The two lists share one name space and one routing table: REST first, then JSON-RPC (a
    // JSON-RPC channel's one static path does not depend on routing order).
    if let Some(c) = doc
        .channel_rest
        .iter()
        .find(|c| c.channel_type != ChannelType::Rest)
    {
        return Err(bad(format!(
            "channel_rest: {} is a {} channel; list it under channel_{1}",
            c.name.as_deref().unwrap_or(&c.url_path),
            c.channel_type.as_str()
        )));
    }
    let channels: Vec<Channel> = doc
        .channel_rest
        .into_iter()
        .chain(doc.channel_jsonrpc.into_iter().map(|c| Channel {
            channel_type: ChannelType::JsonRpc,
            ..c
        }))
        .map(|c| Channel {
            name: Some(c.name.clone().unwrap_or_else(|| c.url_path.clone())),
            ..c
        })
        .collect();
    if let Some(d) = duplicate(channels.iter().map(|c| c.name.as_deref().unwrap_or(""))) {
        return Err(bad(format!("channels: {d} is listed twice")));
    }
    for c in &channels {
        if cx.settings.channels.iter().any(|f| {
            f.name.as_ref().unwrap_or(&f.url_path) == c.name.as_ref().unwrap_or(&c.url_path)
        }) {
            return Err(bad(format!(
                "{}: {} is defined in server.toml; change it there",
                channel_kind(c),
                c.name.as_deref().unwrap_or("")
            )));
        }
    }
    // The table as it will be, in routing order: stored channels keep their place (updated in
    // place), new ones follow in the document's order.
    let stored: Vec<Channel> = store.channels().await.map_err(unavailable)?;
    let mut result: Vec<Channel> = Vec::new();
    for old in &stored {
        match channels.iter().find(|c| c.name == old.name) {
            Some(new) => result.push(new.clone()),
            None if replace => {
                let name = old.name.clone().unwrap_or_default();
                plan.delete_channels.push(name.clone());
                changes.push(Change {
                    kind: channel_kind(old),
                    name,
                    action: "delete",
                });
            }
            None => result.push(old.clone()),
        }
    }
    for c in &channels {
        let name = c.name.clone().unwrap_or_default();
        crate::store::validate_channel_name(&name)
            .map_err(|e| bad(format!("{}: {e}", channel_kind(c))))?;
        match stored.iter().find(|o| o.name == c.name) {
            Some(old) if old == c => unchanged += 1,
            old => {
                plan.put_channels.push(c.clone());
                changes.push(Change {
                    kind: channel_kind(c),
                    name,
                    action: if old.is_some() { "update" } else { "create" },
                });
                if old.is_none() {
                    result.push(c.clone());
                }
            }
        }
    }
    let mut table = cx.settings.channels.clone();
    table.extend(result.iter().cloned());
    crate::edge::router::Router::new(&table).map_err(|e| bad(format!("channels: {e}")))?;

    // Security definitions: checked by compiling them; the table's channels must find theirs.
    let defs = import_security(
        cx,
        &doc.security,
        replace,
        &mut plan.security,
        &mut changes,
        &mut unchanged,
    )
    .await?;
    cx.routes
        .check(&result, &defs)
        .map_err(|e| bad(e.to_string()))?;

    // Secrets: plain values are sealed here; sealed ones must open with this server's key.
    let listed: &[Value] = match &doc.secret {
        Value::Null => &[],
        Value::Array(a) => a,
        _ => {
            return Err(bad(
                "secret: expected a list of {name, value} or {name, sealed}",
            ));
        }
    };
    let secrets: Vec<(String, SecretIn)> = listed
        .iter()
        .enumerate()
        .map(|(i, v)| parse_secret(i, v))
        .collect::<Result<_, _>>()?;
    if let Some(d) = duplicate(secrets.iter().map(|(n, _)| n.as_str())) {
        return Err(bad(format!("secret: {d} is listed twice")));
    }
    let stored_secrets: BTreeMap<String, String> = store
        .secrets()
        .await
        .map_err(unavailable)?
        .into_iter()
        .map(|s| (s.name, s.sealed))
        .collect();
    for (name, value) in &secrets {
        crate::store::validate_secret_name(name).map_err(|e| bad(format!("secret: {e}")))?;
        let plain = match value {
            SecretIn::Plain(p) => crate::secrets::Plain::new(p.clone()),
            SecretIn::Sealed(s) => cx.key.open(name, s).map_err(|e| bad(e.to_string()))?,
        };
        let old = stored_secrets.get(name);
        let same = match old {
            Some(old) => cx.key.open(name, old).map(|p| p == plain).unwrap_or(false),
            None => false,
        };
        if same {
            unchanged += 1;
            continue;
        }
        let sealed = match value {
            SecretIn::Sealed(s) => s.clone(),
            SecretIn::Plain(p) => cx.key.seal(name, p),
        };
        plan.put_secrets.push((name.clone(), sealed));
        changes.push(Change {
            kind: "secret",
            name: name.clone(),
            action: if old.is_some() { "update" } else { "create" },
        });
    }
    if replace {
        for name in stored_secrets.keys() {
            if !secrets.iter().any(|(n, _)| n == name) {
                plan.delete_secrets.push(name.clone());
                changes.push(Change {
                    kind: "secret",
                    name: name.clone(),
                    action: "delete",
                });
            }
        }
    }

    // Cache definitions: each validated; `replace` keeps a stored `default` (it always exists;
    // the admin API refuses to delete it too).
    let caches = import_objects(
        cx,
        &doc.cache,
        replace,
        &mut plan.caches,
        &mut changes,
        &mut unchanged,
    )
    .await?;

    // Scheduler jobs: each validated; compared as they would be stored (a `start_date` left
    // out is the stored job's).
    let jobs = import_objects(
        cx,
        &doc.job,
        replace,
        &mut plan.jobs,
        &mut changes,
        &mut unchanged,
    )
    .await?;

    // Modules: the changed ones were imported in a worker (`check_modules`, before the
    // caller took its lock) and nothing is written unless they were.
    if let Some(d) = duplicate(doc.service_module.iter().map(|m| m.name.as_str())) {
        return Err(bad(format!("service_module: {d} is listed twice")));
    }
    for m in &doc.service_module {
        crate::store::validate_module_name(&m.name)
            .map_err(|e| bad(format!("service_module: {e}")))?;
    }
    let active = store.active_modules().await.map_err(unavailable)?;
    for m in &doc.service_module {
        match active.iter().find(|a| a.name == m.name) {
            Some(a) if a.source_hash == crate::store::source_hash(&m.source) => unchanged += 1,
            old => {
                plan.deploy_modules.push((m.name.clone(), m.source.clone()));
                changes.push(Change {
                    kind: "service_module",
                    name: m.name.clone(),
                    action: if old.is_some() { "update" } else { "create" },
                });
            }
        }
    }
    if replace {
        for a in &active {
            if !doc.service_module.iter().any(|m| m.name == a.name) {
                plan.undeploy_modules.push(a.name.clone());
                changes.push(Change {
                    kind: "service_module",
                    name: a.name.clone(),
                    action: "delete",
                });
            }
        }
    }
    if let Some((name, _)) = plan.deploy_modules.iter().find(|(name, source)| {
        !checked
            .iter()
            .any(|(n, h)| n == name && *h == crate::store::source_hash(source))
    }) {
        return Err(DeployError::Busy(format!(
            "module {name} changed in the config store while this import's modules were \
             checked: retry the import"
        )));
    }

    if dry_run || plan.is_empty() {
        return Ok(Report {
            dry_run,
            config_version: store.version().await.map_err(unavailable)?,
            changes,
            unchanged,
            workers: Vec::new(),
        });
    }
    let change = store.apply(&plan, by).await.map_err(|e| match e {
        crate::store::StoreError::Invalid(m) => bad(m),
        e => unavailable(e),
    })?;
    if !plan.caches.is_empty() {
        apply_cache_defs(cx, caches).await;
    }
    if !plan.jobs.is_empty() {
        apply_jobs(cx, jobs).await;
    }
    let mut workers = Vec::new();
    if !change.value.is_empty() {
        workers = crate::deploy::activate_everywhere(&cx.pool, &change.value).await;
    }
    if !plan.undeploy_modules.is_empty() {
        let names: Vec<&str> = plan.undeploy_modules.iter().map(String::as_str).collect();
        let acks = crate::deploy::remove_everywhere(&cx.pool, &names).await;
        workers.extend(acks);
    }
    tracing::info!(
        config_version = change.config_version,
        changed = changes.len(),
        unchanged,
        by,
        "config imported"
    );
    Ok(Report {
        dry_run,
        config_version: change.config_version,
        changes,
        unchanged,
        workers,
    })
}

/// One kind's step of an import: the document's definitions (`listed`, each validated here)
/// against the stored ones, into `plan`; returns every definition as the import leaves them.
async fn import_objects<K: ConfigObject>(
    cx: &Ctx,
    listed: &[K],
    replace: bool,
    plan: &mut ObjectChanges<K>,
    changes: &mut Vec<Change>,
    unchanged: &mut usize,
) -> Result<Vec<K>, DeployError> {
    if let Some(d) = duplicate(listed.iter().map(|c| c.name())) {
        return Err(bad(format!("{}: {d} is listed twice", K::KIND)));
    }
    for c in listed {
        c.validate().map_err(|e| bad(e.to_string()))?;
    }
    let stored: Vec<K> = cx.store.objects().await.map_err(unavailable)?;
    Ok(diff_objects(
        listed,
        stored,
        replace,
        |old, new| old == new,
        plan,
        changes,
        unchanged,
    ))
}

/// `listed` (checked) against `stored`: the puts and (with `replace`) the deletes into `plan`
/// and `changes`, the rest counted as `unchanged`. A definition is unchanged when `same`
/// holds for the stored one and the listed one as it would be stored
/// ([`ConfigObject::into_stored`]). Returns every definition as the import leaves them; an
/// object that always exists is never deleted.
fn diff_objects<K: ConfigObject>(
    listed: &[K],
    stored: Vec<K>,
    replace: bool,
    same: impl Fn(&K, &K) -> bool,
    plan: &mut ObjectChanges<K>,
    changes: &mut Vec<Change>,
    unchanged: &mut usize,
) -> Vec<K> {
    let now = chrono::Utc::now();
    let mut result = Vec::new();
    for c in listed {
        let old = stored.iter().find(|o| o.name() == c.name());
        let as_stored = c.clone().into_stored(old, now);
        match old {
            Some(old) if same(old, &as_stored) => {
                *unchanged += 1;
                result.push(old.clone());
            }
            old => {
                plan.put.push(c.clone());
                changes.push(Change {
                    kind: K::KIND,
                    name: c.name().to_owned(),
                    action: if old.is_some() { "update" } else { "create" },
                });
                result.push(as_stored);
            }
        }
    }
    for o in stored {
        if listed.iter().any(|c| c.name() == o.name()) {
            continue;
        }
        if replace && !K::always_exists(o.name()) {
            plan.delete.push(o.name().to_owned());
            changes.push(Change {
                kind: K::KIND,
                name: o.name().to_owned(),
                action: "delete",
            });
        } else {
            result.push(o);
        }
    }
    result
}

/// Makes this server's live caches match the store's definitions after a change made
/// through this server (the other servers follow through `sync`). `expected`: the
/// definitions as the change left them, applied should the store not answer now (the sync
/// loop then reads them again on its next round).
pub async fn apply_cache_defs(cx: &Ctx, expected: Vec<CacheDef>) {
    let defs = match cx.store.objects().await {
        Ok(defs) => defs,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the cache definitions back: applying the change as made");
            expected
        }
    };
    cx.pool.caches.apply_defs(&defs);
}

/// Hands this server's scheduler the store's jobs after a change made through this server
/// (the other servers follow through `sync`). `expected`: the jobs as the change left them,
/// used should the store not answer now (the sync loop then reads them again on its next
/// round).
pub async fn apply_jobs(cx: &Ctx, expected: Vec<JobDef>) {
    let defs = match cx.store.objects().await {
        Ok(defs) => defs,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the jobs back: applying the change as made");
            expected
        }
    };
    crate::scheduler::jobs::set_live(&cx.scheduler.jobs, defs);
}

/// The document's security definitions into `plan`; returns every definition as the
/// import leaves them (for checking the channels against). Each is built against the stored
/// one (`edge::gate::from_input`: plaintext hashed or sealed, a stored secret kept), then
/// diffed like every kind ([`diff_objects`]).
async fn import_security(
    cx: &Ctx,
    listed: &Value,
    replace: bool,
    plan: &mut ObjectChanges<SecurityDef>,
    changes: &mut Vec<Change>,
    unchanged: &mut usize,
) -> Result<Vec<SecurityDef>, DeployError> {
    let listed: &[Value] = match listed {
        Value::Null => &[],
        Value::Array(a) => a,
        _ => return Err(bad("security: expected a list of definitions")),
    };
    let stored: Vec<SecurityDef> = cx.store.objects().await.map_err(unavailable)?;
    let mut built: Vec<SecurityDef> = Vec::new();
    // The plaintext secret each entry gives, by name.
    let mut plain: BTreeMap<String, String> = BTreeMap::new();
    for (i, v) in listed.iter().enumerate() {
        let name = match v.get("name") {
            Some(Value::String(n)) => n.clone(),
            _ => return Err(bad(format!("security[{i}]: name must be a string"))),
        };
        if built.iter().any(|d| d.name == name) {
            return Err(bad(format!("security: {name} is listed twice")));
        }
        let old = stored.iter().find(|d| d.name == name);
        if let Some(p) = ["password", "key", "secret"]
            .iter()
            .find_map(|f| v.get(*f).and_then(Value::as_str))
        {
            plain.insert(name.clone(), p.to_owned());
        }
        let key = cx.key.clone();
        let (input, prev) = (v.clone(), old.cloned());
        let def = tokio::task::spawn_blocking(move || {
            crate::edge::gate::from_input(input, None, prev.as_ref(), &key)
        })
        .await
        .map_err(unavailable)?
        .map_err(|e| bad(format!("security {name}: {e}")))?;
        built.push(def);
    }
    // Unchanged when every field and the secret itself are the same (a plaintext password is
    // checked against the stored hash, not re-hashed into a "change").
    let same = |o: &SecurityDef, def: &SecurityDef| {
        let fields_same = SecurityDef {
            sealed: None,
            ..o.clone()
        } == SecurityDef {
            sealed: None,
            ..def.clone()
        };
        fields_same
            && crate::edge::gate::same_secret(
                o,
                def,
                plain.get(&def.name).map(String::as_str),
                &cx.key,
            )
    };
    Ok(diff_objects(
        &built, stored, replace, same, plan, changes, unchanged,
    ))
}

/// A serde message with the contents of quoted strings left out (`string "…"`), so that a
/// mistyped document never echoes a value that may be a secret.
pub fn without_values(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(i) = rest.find("string \"") {
        let (head, tail) = rest.split_at(i + "string \"".len());
        out.push_str(head);
        match tail.find('"') {
            Some(j) => {
                out.push_str("…\"");
                rest = &tail[j + 1..];
            }
            None => {
                out.push('…');
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_do_not_quote_values() {
        let e = serde_json::from_str::<Document>(r#"{"channel_rest": "hunter2"}"#).unwrap_err();
        let msg = without_values(&e.to_string());
        assert!(!msg.contains("hunter2"), "{msg}");
        assert!(msg.contains("invalid type"), "{msg}");
        assert_eq!(
            without_values("a string \"x\" and string \"y"),
            "a string \"…\" and string \"…"
        );
        assert_eq!(without_values("unknown field `x`"), "unknown field `x`");
    }

    #[test]
    fn a_cache_definition_error_names_the_field() {
        let def = parse_cache_def(&json!({"max_entries": 5}), Some("s")).unwrap();
        assert_eq!(
            def,
            CacheDef {
                max_entries: 5,
                ..CacheDef::named("s")
            }
        );
        let err = |v: Value, name: Option<&str>| parse_cache_def(&v, name).unwrap_err();
        let e = err(
            json!({"max_entires": 5, "ttl": 1, "replicate": true}),
            Some("s"),
        );
        assert!(
            e.contains("max_entires, ttl") && e.contains("max_entries"),
            "{e}"
        );
        let e = err(json!({"max_entries": "many"}), Some("s"));
        assert!(e.starts_with("cache s: max_entries: invalid type"), "{e}");
        let e = err(json!({"default_expiry_s": -1}), Some("s"));
        assert!(e.contains("default_expiry_s:"), "{e}");
        let e = err(json!({"name": "t"}), Some("s"));
        assert!(e.contains("cannot be renamed"), "{e}");
        assert!(err(json!({"max_entries": 5}), None).contains("name"));
        assert!(err(json!([1]), Some("s")).contains("JSON object"));
        // In a document: the entry is named too.
        let e = serde_json::from_value::<Document>(
            json!({"cache": [{"name": "a"}, {"name": "b", "replicate": "no"}]}),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("cache[1]: cache b: replicate:"), "{e}");
        let doc: Document = serde_json::from_value(json!({"cache": null})).unwrap();
        assert!(doc.cache.is_empty());
    }

    #[test]
    fn a_job_entry_error_names_the_entry_and_the_field() {
        let doc: Document = serde_json::from_value(json!({"job": [
            {"name": "a", "type": "one_time", "service": "s"},
            {"name": "b", "type": "cron_style", "service": "s", "cron": "0 8 * * *"},
        ]}))
        .unwrap();
        assert_eq!(doc.job.len(), 2);
        assert_eq!(doc.job[1].cron.as_deref(), Some("0 8 * * *"));
        let e = serde_json::from_value::<Document>(json!({"job": [
            {"name": "a", "type": "one_time", "service": "s"},
            {"name": "b", "type": "one_time", "service": "s", "jitter_ms": "x"},
        ]}))
        .unwrap_err()
        .to_string();
        assert!(e.contains("job[1]: job b: jitter_ms:"), "{e}");
        let e = serde_json::from_value::<Document>(json!({"job": [{"type": "one_time"}]}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("job[0]: name: missing"), "{e}");
        let e = serde_json::from_value::<Document>(json!({"job": {"name": "a"}}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("job: expected a list"), "{e}");
        let doc: Document = serde_json::from_value(json!({"job": null})).unwrap();
        assert!(doc.job.is_empty());
    }

    #[test]
    fn a_secret_list_of_the_wrong_shape_is_refused_without_its_value() {
        let doc: Document = serde_json::from_str(r#"{"secret": "hunter2"}"#).unwrap();
        assert_eq!(doc.secret, Value::String("hunter2".into()));
        for (i, v) in [
            json!({"name": "a", "value": 5}),
            json!("hunter2"),
            json!({"name": "a"}),
        ]
        .iter()
        .enumerate()
        {
            let err = parse_secret(i, v).err().expect("refused").to_string();
            assert!(!err.contains("hunter2") && !err.contains('5'), "{err}");
        }
    }
}
