//! The admin API's create/replace and delete of a JSON-defined named object
//! ([`ConfigObject`]: security definitions, cache definitions, scheduler jobs): one
//! implementation, with what really differs per kind as [`AdminObject`]'s hooks (how a
//! definition is built from a body, how this server applies a change, the answer). Every
//! change is made under the deploy lock, stored with a config version bump, applied on this
//! server before the answer, and reaches the other servers through the bus and the sync loop.
//! Listing and reading stay with each kind's file: they read different sources (the live
//! caches and jobs, the store's security definitions without secret material).
//! This file knows the store's generic objects and nothing of any kind's runtime.

use bytes::Bytes;
use hyper::{Response, StatusCode};
use serde_json::{Value, json};
use tracing::info;

use super::{Body, error, json_body, reply};
use crate::admin::Ctx;
use crate::model::object::ConfigObject;
use crate::store::StoreError;

/// Who the store records as having made a change through this API.
pub(super) const BY: &str = "admin-api";

/// A refused request: the status and message of its error answer.
pub(super) struct Refused(StatusCode, String);

impl Refused {
    pub(super) fn new(status: StatusCode, msg: impl std::fmt::Display) -> Refused {
        Refused(status, msg.to_string())
    }

    pub(super) fn answer(self) -> Response<Body> {
        error(self.0, self.1)
    }
}

/// What differs per kind in the admin API's changes.
pub(super) trait AdminObject: ConfigObject {
    /// Whether `PUT /…/{name}` creates as well as replaces (else `POST` creates and `PUT`
    /// replaces only, 404 when there is nothing to replace).
    const PUT_CREATES: bool = true;
    /// Whether a definition is built from the stored one of its name, under the deploy lock
    /// (a security definition keeps its stored secret when the body has none); else from the
    /// body alone, before the lock is taken.
    const BUILT_FROM_STORED: bool = false;
    /// The status of a put that the store refuses because the object is gone (deleted
    /// meanwhile through another server).
    const GONE: StatusCode = StatusCode::CONFLICT;
    /// Whether `apply_local` uses the definitions it is handed (a delete then reads them
    /// first); a kind whose local apply reads the store itself skips that read, so a stored
    /// row this server cannot read does not stop its deletion.
    const APPLIES_EXPECTED: bool = true;

    /// A checked definition from a request body's JSON; `name`: the URL's (none for a
    /// create by `POST`); `stored`: the stored one of that name when [`Self::BUILT_FROM_STORED`].
    /// Else the error answer (400 naming the problem).
    async fn build(
        cx: &Ctx,
        input: Value,
        name: Option<&str>,
        stored: Option<&Self>,
    ) -> Result<Self, Refused>;

    /// Makes this server run by the kind's definitions after a change made through it.
    /// `expected`: every definition as the change left them, for when the store does not
    /// answer now.
    async fn apply_local(cx: &Ctx, expected: Vec<Self>) -> Result<(), Refused>;

    /// The answer to a put, after [`Self::apply_local`] (`created`: 201, else 200).
    fn put_answer(
        cx: &Ctx,
        def: &Self,
        config_version: i64,
        created: bool,
    ) -> Result<Value, Refused>;

    /// A delete refused before anything is read (an object that always exists, one that
    /// server.toml refers to).
    fn refuse_delete(_cx: &Ctx, _name: &str) -> Option<Refused> {
        None
    }

    /// The 404's message of a delete of an object that does not exist.
    fn not_found(name: &str) -> String {
        format!("no {} named {name}", Self::WHAT)
    }
}

/// `PUT /v1/<kind>/{name}` (`name`), or the `POST` that creates (no `name`): creates or
/// replaces the definition (201 / 200).
pub(super) async fn put<K: AdminObject>(
    cx: &Ctx,
    name: Option<&str>,
    body: Bytes,
) -> Response<Body> {
    // A create by `POST /v1/<kind>`: its audit row names the created object (below).
    let posted = name.is_none();
    let input = match json_body(&body) {
        Ok(v) => v,
        Err(m) => return error(StatusCode::BAD_REQUEST, m),
    };
    let (input, mut def) = if K::BUILT_FROM_STORED {
        (Some(input), None)
    } else {
        match K::build(cx, input, name, None).await {
            Ok(d) => (None, Some(d)),
            Err(r) => return r.answer(),
        }
    };
    let _one_at_a_time = cx.locks.deploy.lock().await;
    let stored: Vec<K> = match cx.store.objects().await {
        Ok(l) => l,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    let previous = name.and_then(|n| stored.iter().find(|d| d.name() == n));
    let create = match name {
        None => true,
        Some(_) if K::PUT_CREATES => previous.is_none(),
        Some(n) if previous.is_none() => return error(StatusCode::NOT_FOUND, K::not_found(n)),
        Some(_) => false,
    };
    if let Some(input) = input {
        match K::build(cx, input, name, previous).await {
            Ok(d) => def = Some(d),
            Err(r) => return r.answer(),
        }
    }
    let def = def.expect("built before or after the lock");
    let change = match cx.store.put_object(&def, create, BY).await {
        Ok(c) => c,
        // Created or deleted meanwhile through another server.
        Err(StoreError::Invalid(m)) => return error(StatusCode::CONFLICT, m),
        Err(StoreError::NotFound(m)) => return error(K::GONE, m),
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    let def = change.value;
    let name = def.name().to_owned();
    let mut expected: Vec<K> = stored.into_iter().filter(|d| d.name() != name).collect();
    expected.push(def.clone());
    if let Err(r) = K::apply_local(cx, expected).await {
        return r.answer();
    }
    info!(
        kind = K::KIND,
        name = %name,
        created = create,
        "{} {}",
        K::WHAT,
        if create { "created" } else { "updated" }
    );
    match K::put_answer(cx, &def, change.config_version, create) {
        Ok(answer) => {
            let mut resp = reply(
                if create {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                },
                answer,
            );
            if posted {
                // The audit row is this object's only.
                super::audit::AuditNote {
                    name: Some(name),
                    ..Default::default()
                }
                .attach(&mut resp);
            }
            resp
        }
        Err(r) => r.answer(),
    }
}

/// `DELETE /v1/<kind>/{name}`: 404 when there is none; 409 when the store refuses (a
/// security definition a stored channel names).
pub(super) async fn delete<K: AdminObject>(cx: &Ctx, name: &str) -> Response<Body> {
    if let Some(r) = K::refuse_delete(cx, name) {
        return r.answer();
    }
    let _one_at_a_time = cx.locks.deploy.lock().await;
    let stored: Vec<K> = if K::APPLIES_EXPECTED {
        match cx.store.objects().await {
            Ok(l) => l,
            Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
        }
    } else {
        Vec::new()
    };
    let change = match cx.store.delete_object::<K>(name).await {
        Ok(c) => c,
        Err(StoreError::NotFound(_)) => return error(StatusCode::NOT_FOUND, K::not_found(name)),
        Err(StoreError::Invalid(m)) => return error(StatusCode::CONFLICT, m),
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    let expected: Vec<K> = stored.into_iter().filter(|d| d.name() != name).collect();
    if let Err(r) = K::apply_local(cx, expected).await {
        return r.answer();
    }
    info!(kind = K::KIND, name, "{} deleted", K::WHAT);
    reply(
        StatusCode::OK,
        json!({"config_version": change.config_version, "deleted": name}),
    )
}

/// Kind `K`'s definitions as the store has them after a change made through this server, for
/// applying them here (the other servers follow through `sync`); `expected` — the
/// definitions as the change left them — should the store not answer now (the sync loop
/// then reads them again on its next round). `what` names them in the warning.
pub(super) async fn read_back<K: ConfigObject>(cx: &Ctx, expected: Vec<K>, what: &str) -> Vec<K> {
    match cx.store.objects().await {
        Ok(defs) => defs,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the {what} back: applying the change as made");
            expected
        }
    }
}
