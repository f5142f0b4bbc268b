//! The admin API's named API tokens (docs/SECURITY.md, "Admin identities and roles"):
//! `POST /v1/tokens {"name": "ci", "role": "deployer"}` creates one and answers it once (201;
//! the store keeps only its SHA-256), `GET /v1/tokens` lists them (never a token or its
//! hash), `DELETE /v1/tokens/{name}` revokes one, at once on every server (each looks the
//! token up in the store on every request). The name `root` is the admin token file's.
//! Tokens are not config: no config version, no export or import.

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tracing::{debug, info};

use super::auth::{self, Identity, ROOT, Role};
use super::objects::Refused;
use super::{Body, Ctx, error, read_body, reply};
use crate::store::{StoreError, StoredToken};

/// Routes `/v1/tokens/…`; `rest` is the path after `/v1/tokens`, split at `/`.
pub(super) async fn route(
    req: Request<Incoming>,
    cx: &Ctx,
    rest: &[&str],
    who: &Identity,
) -> Response<Body> {
    let method = req.method().clone();
    match (&method, rest) {
        (&Method::GET, []) => list(cx).await,
        (&Method::POST, []) => match read_body(req).await {
            Ok(body) => create(cx, body, who).await,
            Err(r) => r,
        },
        (&Method::DELETE, [name]) => revoke(cx, &crate::edge::router::percent_decode(name)).await,
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no admin endpoint {method} {}", req.uri().path()),
        ),
    }
}

fn token_json(t: &StoredToken) -> Value {
    json!({
        "name": t.name, "role": t.role, "created_at_ms": t.created_at,
        "created_by": t.created_by, "last_used_at_ms": t.last_used_at,
    })
}

/// GET /v1/tokens: every API token, without the token or its hash. Refreshes this server's
/// copy of the tokens (used while the store is unreachable).
async fn list(cx: &Ctx) -> Response<Body> {
    match refresh_copy(cx).await {
        Ok(list) => reply(
            StatusCode::OK,
            json!({ "tokens": list.iter().map(token_json).collect::<Vec<_>>() }),
        ),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// Replaces this server's copy of the tokens (`auth::KnownTokens`) with the store's list;
/// answers the list.
async fn refresh_copy(cx: &Ctx) -> Result<Vec<StoredToken>, StoreError> {
    let generation = cx.tokens.generation();
    let list = cx.store.tokens().await?;
    let copy = list.iter().filter_map(|t| {
        let role = Role::parse(&t.role)?;
        Some((
            t.token_hash.clone(),
            Identity {
                name: t.name.clone(),
                role,
            },
        ))
    });
    if let Some(dropped) = cx.tokens.replace(copy, generation)
        && !dropped.is_empty()
    {
        // Names only, never a token or its hash.
        info!(
            tokens = %dropped.join(", "),
            "admin API tokens no longer in the store (revoked) dropped from this server's copy"
        );
    }
    Ok(list)
}

/// Keeps this server's copy of the tokens fresh: every `cluster.sync_interval_ms` while the
/// store is reachable, the whole copy is replaced from the store, so a token revoked through
/// another server is out of every server's copy within one interval (docs/SECURITY.md).
/// Runs until the process ends.
pub(super) async fn keep_copy_fresh(cx: Arc<Ctx>) {
    let every = Duration::from_millis(cx.settings.cluster.sync_interval_ms);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // Known down: no query (it would wait for the pool's connection retries); the copy
        // is kept as it is until the store answers again.
        if !cx.node.store_ok.load(Ordering::SeqCst) {
            continue;
        }
        if let Err(e) = refresh_copy(&cx).await {
            debug!(error = %e, "could not refresh the copy of the admin API tokens");
        }
    }
}

const ROLES: &str = "admin, deployer or viewer";

/// The name and role of a create request, or the 400 to answer.
fn parse_create(body: &[u8]) -> Result<(String, Role), Refused> {
    let shape = "expected {\"name\": \"<name>\", \"role\": \"admin|deployer|viewer\"}";
    let doc = super::json_body(body).map_err(|e| Refused::new(StatusCode::BAD_REQUEST, e))?;
    let Some(obj) = doc.as_object() else {
        return Err(Refused::new(StatusCode::BAD_REQUEST, shape));
    };
    if let Some(k) = obj.keys().find(|k| !matches!(k.as_str(), "name" | "role")) {
        return Err(Refused::new(
            StatusCode::BAD_REQUEST,
            format!("unknown field {k:?}: {shape}"),
        ));
    }
    let (Some(Value::String(name)), Some(Value::String(role))) = (obj.get("name"), obj.get("role"))
    else {
        return Err(Refused::new(StatusCode::BAD_REQUEST, shape));
    };
    let Some(role) = Role::parse(role) else {
        return Err(Refused::new(
            StatusCode::BAD_REQUEST,
            format!("role {role:.40?} is not a role: {ROLES}"),
        ));
    };
    crate::store::validate_token_name(name)
        .map_err(|e| Refused::new(StatusCode::BAD_REQUEST, e))?;
    Ok((name.clone(), role))
}

/// The identity of deploys through the pickup directory in the audit log (any case: reserved).
const PICKUP: &str = "pickup";

/// `root` in any case: reserved, so that no token's name reads as the token file's identity.
fn is_root(name: &str) -> bool {
    name.eq_ignore_ascii_case(ROOT)
}

fn root_reserved() -> Response<Body> {
    error(
        StatusCode::CONFLICT,
        format!(
            "the token name {ROOT} is reserved: it is the admin token file's identity (replace \
             that file to change it)"
        ),
    )
}

/// POST /v1/tokens: a new token, answered once (201); the store keeps its hash only.
async fn create(cx: &Ctx, body: Bytes, who: &Identity) -> Response<Body> {
    let (name, role) = match parse_create(&body) {
        Ok(x) => x,
        Err(refused) => return refused.answer(),
    };
    if is_root(&name) {
        return root_reserved();
    }
    if name.eq_ignore_ascii_case(PICKUP) {
        return error(
            StatusCode::CONFLICT,
            format!(
                "the token name {PICKUP} is reserved: the audit log records deploys through the \
                 pickup directory under it"
            ),
        );
    }
    let token = auth::new_token();
    match cx
        .store
        .create_token(&name, role.as_str(), &auth::token_hash(&token), &who.name)
        .await
    {
        Ok(Some(t)) => {
            info!(token = %name, role = role.as_str(), by = %who.name, "created an admin API token");
            let mut doc = token_json(&t);
            doc["token"] = json!(token);
            reply(StatusCode::CREATED, doc)
        }
        Ok(None) => error(
            StatusCode::CONFLICT,
            format!("a token named {name} exists already (revoke it first to replace it)"),
        ),
        Err(StoreError::Invalid(m)) => error(StatusCode::BAD_REQUEST, m),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// DELETE /v1/tokens/{name}: revoked at once on every server.
async fn revoke(cx: &Ctx, name: &str) -> Response<Body> {
    if is_root(name) {
        return root_reserved();
    }
    match cx.store.delete_token(name).await {
        Ok(()) => {
            cx.tokens.forget_name(name);
            info!(token = %name, "revoked an admin API token");
            reply(StatusCode::OK, json!({ "name": name, "revoked": true }))
        }
        Err(StoreError::NotFound(m)) => error(StatusCode::NOT_FOUND, m),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}
