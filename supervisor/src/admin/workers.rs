//! The admin API's rolling restart of this server's workers: `POST /v1/workers/restart`
//! does what SIGHUP does (`systemctl reload`): each worker is replaced once its successor is
//! ready, no request refused. The server raises SIGHUP on itself, so the supervisor loop —
//! the only place lifecycle state changes — runs it exactly as an outside signal.
//! `GET /v1/workers/restart` is its progress (`lifecycle::reload::Status`).

use hyper::{Response, StatusCode};
use serde_json::json;
use std::time::Duration;

use super::{Body, Ctx, error, reply};

/// `GET /v1/workers/restart`: the reloads' status.
pub(super) fn status(cx: &Ctx) -> Response<Body> {
    reply(StatusCode::OK, json!(cx.reloads.status()))
}

/// `POST /v1/workers/restart`: 202 once the supervisor loop took it up; 409 while one is
/// running or the server is stopping.
pub(super) async fn restart(cx: &Ctx) -> Response<Body> {
    // One request at a time checks, signals and waits: two sent together would both see no
    // restart running and both signal (the loop runs one; both would be told 202).
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one = ONE_AT_A_TIME.lock().await;
    let before = cx.reloads.status();
    if before.stopping {
        return error(StatusCode::CONFLICT, "the server is stopping");
    }
    if before.reloading {
        return error(
            StatusCode::CONFLICT,
            "a rolling restart of the workers is in progress already",
        );
    }
    if let Err(e) = nix::sys::signal::raise(nix::sys::signal::Signal::SIGHUP) {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot signal this server: {e}"),
        );
    }
    // The loop counts the reload as started when it acts on the signal.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let now = cx.reloads.status();
        if now.started > before.started {
            return reply(
                StatusCode::ACCEPTED,
                json!({"restarting": true, "from_generation": before.generation, "status": now}),
            );
        }
        if tokio::time::Instant::now() > deadline {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server did not take up the restart within 5 s; the signal is still \
                 pending and the restart may start later (GET /v1/workers/restart tells)",
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
