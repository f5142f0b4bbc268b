//! The admin API's config export and import endpoints: `GET /v1/config` (every stored object,
//! one list per kind) and `POST /v1/config[?dry_run=1][&replace=1]`. This file parses the
//! request and answers; the document and the export/import logic are `admin::config_io`'s.

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};

use super::channels::reload_router;
use super::modules::{acks_status, deploy_error};
use super::{Body, Ctx, error, read_body, reply};

/// Routes `/v1/config` (`GET`: export, `POST`: import).
pub(super) async fn route(req: Request<Incoming>, cx: &Ctx) -> Response<Body> {
    let method = req.method().clone();
    match method {
        Method::GET => export_config(cx).await,
        Method::POST => {
            let query = req.uri().query().unwrap_or("").to_owned();
            match read_body(req).await {
                Ok(body) => import_config(cx, &query, body).await,
                Err(r) => r,
            }
        }
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no admin endpoint {method} {}", req.uri().path()),
        ),
    }
}

/// GET /v1/config: every stored object, one list per kind.
async fn export_config(cx: &Ctx) -> Response<Body> {
    let _consistent = cx.locks.deploy.lock().await;
    match crate::admin::config_io::export(cx).await {
        Ok(doc) => reply(
            StatusCode::OK,
            serde_json::to_value(doc).expect("a document serializes"),
        ),
        Err(e) => deploy_error(e),
    }
}

/// POST /v1/config[?dry_run=1][&replace=1]: validated in full, then applied in one
/// transaction.
async fn import_config(cx: &Ctx, query: &str, body: Bytes) -> Response<Body> {
    let mut dry_run = false;
    let mut replace = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, "1"));
        let on = matches!(v, "1" | "true" | "yes");
        match k {
            "dry_run" => dry_run = on,
            "replace" => replace = on,
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("unknown query parameter {k:?} (dry_run, replace)"),
                );
            }
        }
    }
    let doc: crate::admin::config_io::Document = match serde_json::from_slice(&body) {
        Ok(d) => d,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "not a config document: {}",
                    crate::admin::config_io::without_values(&e.to_string())
                ),
            );
        }
    };
    let by = "config-import";
    // The changed modules are imported first, under the deploy deadline and before the
    // lock: a hung import must not hold channel and other changes.
    let checked = match crate::admin::config_io::check_modules(cx, &doc).await {
        Ok(c) => c,
        Err(e) => return deploy_error(e),
    };
    let _one_at_a_time = cx.locks.deploy.lock().await;
    let report =
        match crate::admin::config_io::import(cx, doc, dry_run, replace, by, &checked).await {
            Ok(r) => r,
            Err(e) => return deploy_error(e),
        };
    // channel_rest and channel_jsonrpc alike.
    let touches_channels = report
        .changes
        .iter()
        .any(|c| c.kind.starts_with("channel_"));
    if !dry_run
        && touches_channels
        && let Err(r) = reload_router(cx).await
    {
        return r;
    }
    let status = acks_status(&report.workers);
    let objects = if dry_run {
        Vec::new()
    } else {
        report
            .changes
            .iter()
            .map(|c| (super::audit::import_kind(c.kind).to_owned(), c.name.clone()))
            .collect()
    };
    let note = super::audit::AuditNote {
        objects: Some(objects),
        ..super::audit::AuditNote::detail(serde_json::json!({
            "dry_run": dry_run,
            "replace": replace,
            "changes": report.changes.len(),
            "unchanged": report.unchanged,
            "config_version": report.config_version,
        }))
    };
    let mut resp = reply(
        status,
        serde_json::to_value(report).expect("a report serializes"),
    );
    note.attach(&mut resp);
    resp
}
