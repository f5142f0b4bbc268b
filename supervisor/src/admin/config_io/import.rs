//! A config import: the document validated in full against the store and this server
//! (channels routing beside server.toml's, security definitions built against the stored
//! ones, secrets sealed or opened with this server's key, modules imported in a worker
//! first), then applied in one store transaction and brought to this server's workers,
//! caches and scheduler. Every JSON-defined kind takes one generic step ([`import_objects`]
//! over [`diff_objects`]). The caller (`admin::config`) holds the deploy lock and rebuilds
//! the routing table.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

use super::{Change, Document, FORMAT, Report, bad, unavailable};
use crate::admin::Ctx;
use crate::admin::caches::apply_cache_defs;
use crate::admin::jobs::apply_jobs;
use crate::deploy::{DeployError, Source};
use crate::model::channel::{Channel, ChannelType};
use crate::model::object::ConfigObject;
use crate::model::security::SecurityDef;
use crate::store::{ObjectChanges, Plan};

/// A secret entry of a document, parsed without ever quoting its value.
enum SecretIn {
    Plain(String),
    Sealed(String),
}

/// One `secret` entry: its name, value and readers (`services`; `None` when absent).
fn parse_secret(
    i: usize,
    v: &Value,
) -> Result<(String, SecretIn, Option<Vec<String>>), DeployError> {
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
        .find(|k| !["name", "value", "sealed", "services"].contains(&k.as_str()))
    {
        return Err(bad(format!("secret {name}: unknown field {k:?}")));
    }
    let services: Option<Vec<String>> = match obj.get("services") {
        None | Some(Value::Null) => None,
        Some(v) => Some(serde_json::from_value(v.clone()).map_err(|_| {
            bad(format!(
                "secret {name}: services must be a list of service names or patterns"
            ))
        })?),
    };
    if let Some(s) = &services {
        crate::store::validate_services(&name, s).map_err(|e| bad(e.to_string()))?;
    }
    match (obj.get("value"), obj.get("sealed")) {
        (Some(Value::String(p)), None) => Ok((name, SecretIn::Plain(p.clone()), services)),
        (None, Some(Value::String(s))) => Ok((name, SecretIn::Sealed(s.clone()), services)),
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
        // A pubsub or WebSocket channel is listed with the REST channels (its "type" says
        // what it is).
        ChannelType::Rest | ChannelType::Pubsub | ChannelType::Websocket => "channel_rest",
        ChannelType::JsonRpc => "channel_jsonrpc",
    }
}

fn duplicate<'a>(names: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let mut seen = BTreeSet::new();
    names.into_iter().find(|n| !seen.insert(*n))
}

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
                // An import carries no file: its modules keep the <oxbus:…> names.
                origin: None,
            })
            .collect();
        crate::deploy::checked(&cx.deploy, &srcs).await?;
    }
    Ok(changed
        .iter()
        .map(|m| (m.name.clone(), crate::store::source_hash(&m.source)))
        .collect())
}

/// Validates `doc` in full against the store and this server, then (unless `dry_run`) applies
/// it in one transaction and brings the workers, caches and scheduler up to date (the caller
/// rebuilds the routing table). The caller holds `cx.locks.deploy`. `checked` is what [`check_modules`] imported beforehand: a module to
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
        .find(|c| c.channel_type == ChannelType::JsonRpc)
    {
        return Err(bad(format!(
            "channel_rest: {} is a {} channel; list it under channel_{1}",
            c.name.as_deref().unwrap_or(&c.url_path),
            c.channel_type.as_str()
        )));
    }
    // A pubsub channel is listed with the REST channels; under channel_jsonrpc it would be
    // made a JSON-RPC channel silently.
    if let Some(c) = doc
        .channel_jsonrpc
        .iter()
        .find(|c| matches!(c.channel_type, ChannelType::Pubsub | ChannelType::Websocket))
    {
        return Err(bad(format!(
            "channel_jsonrpc: {} is a {} channel; list it under channel_rest",
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
    let secrets: Vec<(String, SecretIn, Option<Vec<String>>)> = listed
        .iter()
        .enumerate()
        .map(|(i, v)| parse_secret(i, v))
        .collect::<Result<_, _>>()?;
    if let Some(d) = duplicate(secrets.iter().map(|(n, _, _)| n.as_str())) {
        return Err(bad(format!("secret: {d} is listed twice")));
    }
    let stored_secrets: BTreeMap<String, (String, Vec<String>)> = store
        .secrets()
        .await
        .map_err(unavailable)?
        .into_iter()
        .map(|s| (s.name, (s.sealed, s.services)))
        .collect();
    let no_readers: Vec<String> = Vec::new();
    for (name, value, services) in &secrets {
        crate::store::validate_secret_name(name).map_err(|e| bad(format!("secret: {e}")))?;
        let plain = match value {
            SecretIn::Plain(p) => crate::secrets::Plain::new(p.clone()),
            SecretIn::Sealed(s) => cx.key.open(name, s).map_err(|e| bad(e.to_string()))?,
        };
        let old = stored_secrets.get(name);
        // Without `services`: a merge keeps the stored readers; a replace (or a new secret)
        // has none.
        let services = match (services, old) {
            (Some(s), _) => s,
            (None, Some((_, old_services))) if !replace => old_services,
            (None, _) => &no_readers,
        };
        let same = match old {
            Some((old, old_services)) => {
                old_services == services
                    && cx.key.open(name, old).map(|p| p == plain).unwrap_or(false)
            }
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
        plan.secret_services.insert(name.clone(), services.clone());
        changes.push(Change {
            kind: "secret",
            name: name.clone(),
            action: if old.is_some() { "update" } else { "create" },
        });
    }
    if replace {
        for name in stored_secrets.keys() {
            if !secrets.iter().any(|(n, _, _)| n == name) {
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

    // File-transfer channels: each validated.
    let channel_file = import_objects(
        cx,
        &doc.channel_file,
        replace,
        &mut plan.inbound_file,
        &mut changes,
        &mut unchanged,
    )
    .await?;

    // User config: each validated.
    let user_config = import_objects(
        cx,
        &doc.user_config,
        replace,
        &mut plan.user_config,
        &mut changes,
        &mut unchanged,
    )
    .await?;

    // Outgoing connections: plaintext credentials sealed, sealed ones checked to open with
    // this server's key, a stored credential kept as an admin API edit keeps it.
    let outgoing_rest = import_outgoing(
        cx,
        &doc.outgoing_rest,
        replace,
        &mut plan.outgoing_rest,
        &mut changes,
        &mut unchanged,
    )
    .await?;
    let outgoing_sql = import_outgoing(
        cx,
        &doc.outgoing_sql,
        replace,
        &mut plan.outgoing_sql,
        &mut changes,
        &mut unchanged,
    )
    .await?;
    let outgoing_amqp = import_outgoing(
        cx,
        &doc.outgoing_amqp,
        replace,
        &mut plan.outgoing_amqp,
        &mut changes,
        &mut unchanged,
    )
    .await?;
    let outgoing_redis = import_outgoing(
        cx,
        &doc.outgoing_redis,
        replace,
        &mut plan.outgoing_redis,
        &mut changes,
        &mut unchanged,
    )
    .await?;
    // MQTT connections and channels: their password as the other credentialed kinds'.
    let outgoing_mqtt = import_outgoing(
        cx,
        &doc.outgoing_mqtt,
        replace,
        &mut plan.outgoing_mqtt,
        &mut changes,
        &mut unchanged,
    )
    .await?;
    let channel_mqtt = import_outgoing(
        cx,
        &doc.channel_mqtt,
        replace,
        &mut plan.inbound_mqtt,
        &mut changes,
        &mut unchanged,
    )
    .await?;
    if let Some(e) = crate::model::mqtt::shared_client_id(&channel_mqtt) {
        return Err(bad(format!("channel_mqtt: {e}")));
    }
    // AMQP channels: their passwords as the outgoing connections' credentials.
    let inbound_amqp = import_outgoing(
        cx,
        &doc.channel_amqp,
        replace,
        &mut plan.inbound_amqp,
        &mut changes,
        &mut unchanged,
    )
    .await?;

    // Pub/sub: topics, subscriptions and endpoints, each validated; then what they name must
    // exist in the config as the import leaves it (a subscription's topic, unless a pattern,
    // and its dead-letter topic; an endpoint's security definition).
    let pubsub_topics = import_objects(
        cx,
        &doc.pubsub_topic,
        replace,
        &mut plan.pubsub_topics,
        &mut changes,
        &mut unchanged,
    )
    .await?;
    let mut pubsub_subs = import_objects(
        cx,
        &doc.pubsub_subscription,
        replace,
        &mut plan.pubsub_subs,
        &mut changes,
        &mut unchanged,
    )
    .await?;
    // A replace keeps WebSocket clients' subscriptions (not config), except those to a
    // topic (or dead-letter topic) it deletes: they go with it.
    if replace {
        let topics: std::collections::HashSet<&str> =
            pubsub_topics.iter().map(|t| t.name.as_str()).collect();
        pubsub_subs.retain(|s| {
            let gone_topic = !s.topic.contains('*') && !topics.contains(s.topic.as_str());
            let gone_dead = s
                .dead_letter_topic
                .as_deref()
                .is_some_and(|d| !topics.contains(d));
            if s.runtime_only() && (gone_topic || gone_dead) {
                plan.pubsub_subs.delete.push(s.sub_key.clone());
                changes.push(Change {
                    kind: <crate::model::pubsub::Subscription as ConfigObject>::KIND,
                    name: s.sub_key.clone(),
                    action: "delete",
                });
                false
            } else {
                true
            }
        });
    }
    let pubsub_endpoints = import_objects(
        cx,
        &doc.pubsub_endpoint,
        replace,
        &mut plan.pubsub_endpoints,
        &mut changes,
        &mut unchanged,
    )
    .await?;
    crate::admin::pubsub::check_references(
        &pubsub_topics,
        &pubsub_subs,
        &pubsub_endpoints,
        &defs,
        &outgoing_rest,
    )
    .map_err(bad)?;

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
    if !plan.outgoing_rest.is_empty() {
        cx.outgoing.apply_rest(&outgoing_rest);
    }
    if !plan.outgoing_sql.is_empty() {
        cx.outgoing.apply_sql(&outgoing_sql);
    }
    if !plan.outgoing_amqp.is_empty() {
        cx.outgoing.apply_amqp(&outgoing_amqp);
    }
    if !plan.outgoing_redis.is_empty() {
        cx.outgoing.apply_redis(&outgoing_redis);
    }
    if !plan.outgoing_mqtt.is_empty() {
        cx.outgoing.apply_mqtt(&outgoing_mqtt);
    }
    if !plan.inbound_mqtt.is_empty() {
        cx.inbound.apply_mqtt(&channel_mqtt);
    }
    if !plan.inbound_amqp.is_empty() {
        cx.inbound.apply_amqp(&inbound_amqp);
    }
    if !plan.inbound_file.is_empty() {
        cx.files.apply(&channel_file);
    }
    if !plan.user_config.is_empty() {
        cx.user_config.apply(&user_config);
    }
    if !(plan.pubsub_topics.is_empty()
        && plan.pubsub_subs.is_empty()
        && plan.pubsub_endpoints.is_empty())
    {
        cx.pubsub.apply(&crate::model::object::ObjectSet {
            pubsub_topics,
            pubsub_subs,
            pubsub_endpoints,
            ..Default::default()
        });
    }
    // What the store keeps beside a deleted topic or subscription goes with it, as the admin
    // API's deletes do: a topic's log, a subscription's cursors, lease and dead letters (its
    // delivery task stopped with the definitions applied above).
    for topic in &plan.pubsub_topics.delete {
        if let Err(e) = store.drop_topic_log(topic).await {
            tracing::warn!(topic = %topic, error = %e, "pubsub: cannot drop a deleted topic's log");
        }
    }
    for sub_key in &plan.pubsub_subs.delete {
        if let Err(e) = store.sub_forget(sub_key).await {
            tracing::warn!(%sub_key, error = %e, "pubsub: cannot forget a deleted subscription");
        }
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
        if c.runtime_only() {
            return Err(bad(format!(
                "{} {}: it belongs to a connection of a running server (a WebSocket client's subscription) and is not imported",
                K::WHAT,
                c.name()
            )));
        }
    }
    let stored: Vec<K> = cx.store.objects().await.map_err(unavailable)?;
    if let Some(o) = stored
        .iter()
        .find(|o| o.runtime_only() && listed.iter().any(|c| c.name() == o.name()))
    {
        return Err(bad(format!(
            "{} {}: that name belongs to a connection of a running server (a WebSocket client's subscription); import it under another name",
            K::WHAT,
            o.name()
        )));
    }
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
        if replace && !K::always_exists(o.name()) && !o.runtime_only() {
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

/// The document's outgoing connections of kind `K` (`listed`: raw JSON, each entry parsed
/// and built as the admin API builds a body: `admin::outgoing::build`) into `plan`; returns
/// every definition as the import leaves them. Unchanged when equal with the sealed values
/// opened (a plaintext sealed again is no change).
async fn import_outgoing<K>(
    cx: &Ctx,
    listed: &Value,
    replace: bool,
    plan: &mut ObjectChanges<K>,
    changes: &mut Vec<Change>,
    unchanged: &mut usize,
) -> Result<Vec<K>, DeployError>
where
    K: crate::admin::outgoing::Parsed,
{
    let listed: &[Value] = match listed {
        Value::Null => &[],
        Value::Array(a) => a,
        _ => return Err(bad(format!("{}: expected a list of connections", K::KIND))),
    };
    let stored: Vec<K> = cx.store.objects().await.map_err(unavailable)?;
    let mut built: Vec<K> = Vec::new();
    for (i, v) in listed.iter().enumerate() {
        let input = K::parse(v, None).map_err(|e| bad(format!("{}[{i}]: {e}", K::KIND)))?;
        if built.iter().any(|d| d.name() == input.def.name()) {
            return Err(bad(format!(
                "{}: {} is listed twice",
                K::KIND,
                input.def.name()
            )));
        }
        let old = stored.iter().find(|d| d.name() == input.def.name());
        let def = crate::admin::outgoing::build(&cx.key, input, old)
            .map_err(|e| bad(format!("{}[{i}]: {e}", K::KIND)))?;
        built.push(def);
    }
    let same = |o: &K, d: &K| crate::admin::outgoing::same_opened(&cx.key, o, d);
    Ok(diff_objects(
        &built, stored, replace, same, plan, changes, unchanged,
    ))
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
