//! Rotation of the message log's partitions (docs/PUBSUB.md "Storage"): rows leave the log
//! by TRUNCATE of a whole partition, never by DELETE, so PostgreSQL keeps no dead tuples to
//! vacuum however many messages pass.
//!
//! One server of the cluster rotates: the holder of the lease `#rotate` in `pubsub_lease`
//! (10 s, renewed every 2 s; handed back at a clean stop). Every [`ROTATE_EVERY`] (or every
//! second while the current partition has taken more than [`FAST_ROWS`] messages) it makes
//! the next partition current, then cleans the one after it, the oldest: its still-live rows
//! (not expired and not yet done by every cursor of their topic, or kept for a topic
//! without subscription) move into the current partition and the partition is emptied.
//! So the partition a rotation switches to is always the one the previous rotation cleaned.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

use super::{Inner, PubsubError, now_ms};
use crate::store::pubsub_log::{CleanFigures, LOG_PARTS, LogFigures};

/// How often the log rotates.
pub const ROTATE_EVERY: Duration = Duration::from_secs(60);
/// Past this many messages appended since the last rotation, it rotates every second.
pub const FAST_ROWS: i64 = 500_000;
/// The rotation lease's lifetime and its renewal period.
const LEASE_TTL: Duration = Duration::from_secs(10);
const LEASE_RENEW: Duration = Duration::from_secs(2);
const TICK: Duration = Duration::from_secs(1);
/// How often the rotator collects what deleted subscriptions and topics left in the store
/// (orphan cursors, leases, dead letters, topic logs), the first time this long after it
/// took the lease.
pub const GC_EVERY: Duration = Duration::from_secs(60);
/// How long a cursor of a subscription without its `pubsub_subs` row is kept after its
/// last write: a subscription made in one transaction with its cursors is never seen so,
/// this only spares a cursor written by a delivery task a moment after its subscription
/// went.
pub const GC_GRACE: Duration = Duration::from_secs(60);

/// What the last rotation this server ran did (admin API).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rotation {
    /// When it ran (Unix ms).
    pub at_ms: i64,
    /// The partition that was current, and the one that is now.
    pub from: i16,
    pub to: i16,
    /// The partition cleaned: live rows moved, dead ones removed.
    pub cleaned: CleanFigures,
    /// Messages appended since the previous rotation (as far as this server saw).
    pub appended: i64,
    pub took_ms: u64,
}

pub struct Retention {
    last: Mutex<Option<Rotation>>,
}

impl Default for Retention {
    fn default() -> Retention {
        Retention::new()
    }
}

impl Retention {
    pub fn new() -> Retention {
        Retention {
            last: Mutex::new(None),
        }
    }
}

impl super::Broker {
    /// The last rotation of the log this server ran, if it ran one.
    pub fn last_rotation(&self) -> Option<Rotation> {
        self.inner
            .retention
            .last
            .lock()
            .expect("rotation lock")
            .clone()
    }

    /// The log's storage figures: rows and bytes per partition.
    pub async fn log_figures(&self) -> Result<LogFigures, PubsubError> {
        self.inner
            .store
            .log_figures()
            .await
            .map_err(|e| PubsubError::Unavailable(e.to_string()))
    }
}

/// The rotator's state while it holds the lease.
struct State {
    /// The partition after the current one may hold rows (just rotated, a clean that
    /// failed, or unknown at takeover): clean it before the next switch.
    dirty: bool,
    /// `log_appended_total` at the last rotation (or at takeover).
    baseline: Option<i64>,
    /// When the store's orphans were last collected (or the lease taken).
    collected: Instant,
}

pub(crate) fn start(inner: &Arc<Inner>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let inner = inner.clone();
    tokio::spawn(async move {
        let me = inner.server.clone();
        let mut held = false;
        let mut renewed: Option<Instant> = None;
        let mut state = State {
            dirty: true,
            baseline: None,
            collected: Instant::now(),
        };
        loop {
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = shutdown.wait_for(|s| *s) => break,
            }
            if renewed.is_none_or(|t| t.elapsed() >= LEASE_RENEW) {
                match inner
                    .store
                    .take_rotate_lease(&me, now_ms(), LEASE_TTL)
                    .await
                {
                    Ok(h) => {
                        if h && !held {
                            debug!("pubsub: this server rotates the message log now");
                            state = State {
                                dirty: true,
                                baseline: None,
                                collected: Instant::now(),
                            };
                        }
                        held = h;
                        renewed = Some(Instant::now());
                    }
                    Err(e) => {
                        // Not renewed: another server may take it once it expires.
                        debug!(error = %e, "pubsub: the rotation lease could not be renewed");
                        held = false;
                        renewed = None;
                    }
                }
            }
            if held && let Err(e) = tick(&inner, &mut state).await {
                warn!(error = %e, "pubsub: log rotation failed; it is tried again");
            }
        }
        if held {
            let _ = inner.store.release_rotate_lease(&me).await;
        }
    });
}

/// One round of the rotator: cleans what is left to clean, rotates when it is time.
async fn tick(inner: &Inner, state: &mut State) -> Result<(), crate::store::StoreError> {
    let store = &inner.store;
    let (current, rotated_at) = store.log_current_part().await?;
    let next = (current + 1) % LOG_PARTS;
    if state.dirty {
        let c = store.clean_log_part(next, current, now_ms()).await?;
        state.dirty = false;
        if c.moved > 0 || c.removed > 0 {
            info!(
                part = next,
                moved = c.moved,
                removed = c.removed,
                "pubsub: log partition cleaned"
            );
        }
    }
    if state.collected.elapsed() >= GC_EVERY {
        state.collected = Instant::now();
        let g = store.log_gc(now_ms(), GC_GRACE.as_millis() as i64).await?;
        if !g.is_empty() {
            info!(
                dead_letters = g.dead_letters,
                cursors = g.cursors,
                leases = g.leases,
                "pubsub: collected what deleted subscriptions left"
            );
        }
    }
    let total = store.log_appended_total().await?;
    let baseline = *state.baseline.get_or_insert(total);
    let now = now_ms();
    let since = now - rotated_at;
    let appended = total - baseline;
    let due = since >= ROTATE_EVERY.as_millis() as i64
        || (appended > FAST_ROWS && since >= TICK.as_millis() as i64);
    if !due {
        return Ok(());
    }
    let started = Instant::now();
    if !store.switch_log_part(current, now).await? {
        // Another server rotated (its lease ran out under it, or ours did): look again.
        state.dirty = true;
        return Ok(());
    }
    state.baseline = Some(total);
    state.dirty = true;
    let oldest = (next + 1) % LOG_PARTS;
    let cleaned = store.clean_log_part(oldest, next, now_ms()).await?;
    state.dirty = false;
    let r = Rotation {
        at_ms: now,
        from: current,
        to: next,
        cleaned,
        appended,
        took_ms: started.elapsed().as_millis() as u64,
    };
    info!(
        from = r.from,
        to = r.to,
        cleaned = r.cleaned.part,
        moved = r.cleaned.moved,
        removed = r.cleaned.removed,
        bytes_before = r.cleaned.bytes_before,
        appended = r.appended,
        took_ms = r.took_ms,
        "pubsub: message log rotated"
    );
    *inner.retention.last.lock().expect("rotation lock") = Some(r);
    Ok(())
}
