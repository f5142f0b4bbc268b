//! A subscription's delivery task: reads its cursors, its backlog and its requeued dead
//! letters, then follows the fanout (committed batches, right after their commit), reading
//! the log again for a topic where it finds a gap, lags behind the fanout or has more than
//! the window; delivers (service, push) one batch at a time in queue order, retries with
//! backoff and dead-letters; for a pull subscription it watches the ack deadlines. Its
//! cursor writes are coalesced: one per [`FLUSH_EVERY`] at most, never one per message.

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use super::SubTask;
use super::queue::WINDOW;
use crate::model::pubsub::{DeliveryKind, OnFull, OnNoSubs};
use crate::pubsub::{Caller, Committed, Inner, NewMsg, now_ms};
use crate::store::{CursorStart, StoreError};

/// The least time between two cursor writes of one subscription.
const FLUSH_EVERY: Duration = Duration::from_millis(5);
/// Messages read from the log at a time.
const PAGE: usize = 1000;
/// How long the task waits when nothing is due (it re-checks the lease's freshness, the
/// expiries and the definitions at least this often).
const IDLE: Duration = Duration::from_secs(1);
/// After a store failure, the task waits this long before trying again.
const STORE_RETRY: Duration = Duration::from_millis(500);
/// How often the log is looked at even without a gap: a peer's committed batch lost on the
/// bus (with no later batch of its topic to show the gap) is found this way.
const POLL: Duration = Duration::from_secs(5);

pub(super) async fn run(
    inner: Arc<Inner>,
    st: Arc<SubTask>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    mut rx: tokio::sync::broadcast::Receiver<Arc<Committed>>,
) {
    let sub_key = st.sub().sub_key.clone();
    while !*stop.borrow() {
        match load(&inner, &st).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(%sub_key, "pubsub: loading the subscription's cursors failed: {e}");
                tokio::select! {
                    _ = stop.changed() => {}
                    _ = tokio::time::sleep(STORE_RETRY) => {}
                }
            }
        }
    }
    let mut reported = super::queue::Counts::default();
    let mut last_flush = tokio::time::Instant::now() - FLUSH_EVERY;
    let mut defs_seen = 0usize;
    let mut polled = tokio::time::Instant::now();
    while !*stop.borrow() {
        report(&inner, &st, &sub_key, &mut reported);
        if polled.elapsed() >= POLL {
            all_behind(&st);
            polled = tokio::time::Instant::now();
        }
        // What the fanout has for us.
        loop {
            match rx.try_recv() {
                Ok(b) => feed(&inner, &st, &b),
                Err(TryRecvError::Lagged(_)) => all_behind(&st),
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        }
        let mut busy = false;
        // A topic made after the subscription (a pattern's): its cursor, lazily.
        let defs = inner.defs.read().expect("defs lock").clone();
        if Arc::as_ptr(&defs) as usize != defs_seen {
            match ensure_cursors(&inner, &st).await {
                Ok(()) => defs_seen = Arc::as_ptr(&defs) as usize,
                Err(e) => tracing::warn!(%sub_key, "pubsub: creating cursors failed: {e}"),
            }
        }
        match read_behind(&inner, &st).await {
            Ok(more) => busy |= more,
            Err(e) => {
                tracing::warn!(%sub_key, "pubsub: reading the log failed: {e}");
                tokio::select! {
                    _ = stop.changed() => {}
                    _ = tokio::time::sleep(STORE_RETRY) => {}
                }
            }
        }
        let sub = st.sub();
        let now = now_ms();
        {
            let mut q = st.q.lock().expect("queue lock");
            let overflowing: Vec<(String, u64)> = q
                .topics
                .keys()
                .filter_map(|name| defs.topics.get(name))
                .filter(|t| t.on_full == OnFull::Overflow)
                .map(|t| (t.name.clone(), t.max_depth_gd))
                .collect();
            for (name, depth) in overflowing {
                q.overflow(&name, depth);
            }
            if matches!(sub.delivery, DeliveryKind::Pull) && q.ack_timeouts(&sub.retry, now) > 0 {
                st.arrived.notify_waiters();
            }
            if q.len() > 0 {
                st.arrived.notify_waiters();
            }
        }
        // The cursors, coalesced.
        let dirty = {
            let q = st.q.lock().expect("queue lock");
            q.dirty || !q.dying.is_empty() || !q.dead_done.is_empty()
        };
        let mut flush_at = None;
        if dirty {
            if last_flush.elapsed() >= FLUSH_EVERY {
                match flush(&inner, &st).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(%sub_key, "pubsub: the lease is gone, delivery stops here");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(%sub_key, "pubsub: writing the cursors failed: {e}");
                        flush_at = Some(tokio::time::Instant::now() + STORE_RETRY);
                    }
                }
                last_flush = tokio::time::Instant::now();
            } else {
                flush_at = Some(last_flush + FLUSH_EVERY);
            }
        }
        // A lease this server could not renew for nearly its TTL may be another's soon:
        // delivery stops here (the lease loop starts the task again once it renews).
        if !st.lease_fresh(now_ms()) {
            tracing::warn!(%sub_key, "pubsub: the lease was not renewed in time, delivery stops here");
            break;
        }
        // Deliver one batch (service, push): in order, one at a time.
        if !matches!(sub.delivery, DeliveryKind::Pull) {
            let now = now_ms();
            let batch = st.q.lock().expect("queue lock").take_capped(
                sub.batch_size as usize,
                super::send::MAX_BATCH_BYTES,
                now,
                now.saturating_add(3_600_000),
                true,
            );
            if !batch.is_empty() {
                let result = super::send::deliver(&inner, &sub, &batch).await;
                let now = now_ms();
                let mut q = st.q.lock().expect("queue lock");
                for e in &batch {
                    match &result {
                        Ok(()) => {
                            q.ack(&e.msg.msg_id, now);
                        }
                        Err(why) => q.failed(&e.msg.msg_id, why, &sub.retry, now),
                    }
                }
                if let Err(why) = &result {
                    tracing::debug!(%sub_key, "pubsub: delivery failed: {why}");
                }
                continue;
            }
        }
        if busy {
            tokio::task::yield_now().await;
            continue;
        }
        // Wait for something to do.
        let now = now_ms();
        let due = st.q.lock().expect("queue lock").next_due(now);
        let mut until = tokio::time::Instant::now() + IDLE;
        if let Some(d) = due {
            let wait = Duration::from_millis((d - now).max(0) as u64);
            until = until.min(tokio::time::Instant::now() + wait);
        }
        if let Some(f) = flush_at {
            until = until.min(f);
        }
        tokio::select! {
            _ = stop.changed() => {}
            r = rx.recv() => match r {
                Ok(b) => feed(&inner, &st, &b),
                Err(RecvError::Lagged(_)) => all_behind(&st),
                Err(RecvError::Closed) => {}
            },
            _ = st.wake.notified() => {}
            _ = tokio::time::sleep_until(until) => {}
        }
    }
    // The last counts, unless the subscription is gone (its series are dropped).
    if inner
        .defs
        .read()
        .expect("defs lock")
        .subs
        .contains_key(&sub_key)
    {
        report(&inner, &st, &sub_key, &mut reported);
    }
    // Out of the server's tasks (when it stopped by itself: the lease lost), so that calls
    // on the subscription look for its owner again.
    {
        let mut tasks = inner.delivery.tasks.lock().expect("tasks lock");
        if tasks.get(&sub_key).is_some_and(|t| Arc::ptr_eq(t, &st)) {
            tasks.remove(&sub_key);
        }
    }
    // A last write of what was done, then the lease back (a clean stop).
    if let Err(e) = flush(&inner, &st).await {
        tracing::warn!(%sub_key, "pubsub: the last cursor write failed: {e}");
    }
    if st.release.load(std::sync::atomic::Ordering::SeqCst)
        && let Err(e) = inner.store.sub_lease_release(&sub_key, &inner.server).await
    {
        tracing::warn!(%sub_key, "pubsub: releasing the lease failed: {e}");
    }
    tracing::info!(%sub_key, "pubsub: delivery stopped here");
}

/// Adds what the queue counted since the last report to the server's metrics (once per
/// round of the task's loop, so per batch, never per message).
fn report(inner: &Inner, st: &SubTask, sub_key: &str, reported: &mut super::queue::Counts) {
    let now = st.q.lock().expect("queue lock").counts.clone();
    let m = &inner.metrics.pubsub;
    m.delivered(sub_key, now.acked.saturating_sub(reported.acked));
    m.delivery_failed(
        sub_key,
        now.failed_attempts.saturating_sub(reported.failed_attempts),
    );
    m.expired(sub_key, now.expired.saturating_sub(reported.expired));
    *reported = now;
}

/// The first load: cursors (created for topics that have none), requeued dead letters.
async fn load(inner: &Arc<Inner>, st: &Arc<SubTask>) -> Result<(), StoreError> {
    ensure_cursors(inner, st).await?;
    load_requeued(inner, st).await?;
    st.q.lock().expect("queue lock").loaded = true;
    // Pulls waiting for the load look again (the backlog is read by the loop, and wakes
    // them once it is there).
    st.arrived.notify_waiters();
    Ok(())
}

/// Loads the cursors of every topic the subscription matches that the queue does not know
/// yet, creating those missing (from the subscription's creation time).
async fn ensure_cursors(inner: &Arc<Inner>, st: &Arc<SubTask>) -> Result<(), StoreError> {
    let sub = st.sub();
    let topics = inner.defs.read().expect("defs lock").topics_of(&sub);
    let missing: Vec<String> = {
        let q = st.q.lock().expect("queue lock");
        topics
            .iter()
            .filter(|t| !q.topics.contains_key(&t.name))
            .map(|t| t.name.clone())
            .collect()
    };
    if missing.is_empty() {
        return Ok(());
    }
    let now = now_ms();
    let mut stored = inner.store.sub_cursors(&sub.sub_key).await?;
    for t in &missing {
        if !stored.iter().any(|c| &c.topic == t) {
            // The rule of subscribe() for a subscription stored without cursors (an admin
            // put, an import): a topic's first subscription, naming it exactly, gets what
            // `on_no_subs: keep` kept for it; otherwise (a pattern's topic made later, or
            // others subscribed already) it starts at the first message published since the
            // subscription was made.
            let keep = inner
                .defs
                .read()
                .expect("defs lock")
                .topics
                .get(t)
                .is_some_and(|d| d.on_no_subs == OnNoSubs::Keep);
            let start = if keep
                && sub.topic == *t
                && !inner
                    .store
                    .sub_topic_has_other_cursor(t, &sub.sub_key)
                    .await?
            {
                CursorStart::OldestKept { now_ms: now }
            } else {
                CursorStart::Since(sub.created_at_ms)
            };
            inner
                .store
                .sub_cursor_create(&sub.sub_key, t, start, now)
                .await?;
        }
    }
    if stored.len() < missing.len()
        || missing
            .iter()
            .any(|t| !stored.iter().any(|c| &c.topic == t))
    {
        stored = inner.store.sub_cursors(&sub.sub_key).await?;
    }
    for c in stored.iter().filter(|c| missing.contains(&c.topic)) {
        let last = inner.store.sub_last_seq(&c.topic).await?;
        st.q.lock().expect("queue lock").load_cursor(c, last);
    }
    Ok(())
}

/// Puts the subscription's requeued dead letters into its queue (those not there yet).
pub(super) async fn load_requeued(inner: &Arc<Inner>, st: &Arc<SubTask>) -> Result<(), StoreError> {
    let sub_key = st.sub().sub_key.clone();
    let rows = inner
        .store
        .sub_dead(&sub_key, Some(true), WINDOW as u32)
        .await?;
    if rows.is_empty() {
        return Ok(());
    }
    {
        let mut q = st.q.lock().expect("queue lock");
        for r in rows {
            q.add_dead(Arc::new(r.msg));
        }
    }
    st.arrived.notify_waiters();
    st.wake.notify_one();
    Ok(())
}

/// Every topic reads the log from where it is (the fanout ran ahead of this task).
fn all_behind(st: &SubTask) {
    let mut q = st.q.lock().expect("queue lock");
    for p in q.topics.values_mut() {
        p.behind = true;
    }
}

/// A committed batch: this subscription's messages join its queue (GD ones only where they
/// follow on from what it has; non-GD ones at once).
fn feed(inner: &Arc<Inner>, st: &Arc<SubTask>, batch: &Committed) {
    let sub = st.sub();
    let defs = inner.defs.read().expect("defs lock").clone();
    let now = now_ms();
    let mut by_topic: Vec<(&str, Vec<Arc<crate::model::pubsub::Message>>)> = Vec::new();
    let mut any = false;
    let mut q = st.q.lock().expect("queue lock");
    for m in &batch.msgs {
        if !crate::model::pubsub::matches(&sub.topic, &m.topic) {
            continue;
        }
        any = true;
        if m.has_gd && m.seq > 0 {
            match by_topic.iter_mut().find(|(t, _)| *t == m.topic) {
                Some((_, v)) => v.push(m.clone()),
                None => by_topic.push((&m.topic, vec![m.clone()])),
            }
        } else {
            let depth = defs
                .topics
                .get(&m.topic)
                .map_or(10_000, |t| t.max_depth_non_gd);
            q.add_memory(m.clone(), depth);
        }
    }
    for (topic, msgs) in by_topic {
        // A topic with no cursor yet (made after the subscription) is read from the log
        // once its cursor exists.
        q.add_log(topic, &msgs, now, false);
    }
    drop(q);
    if any {
        st.arrived.notify_waiters();
    }
}

/// Reads the log for the topics that are behind, while the window has room: whether some
/// topic is still behind with room to read more.
async fn read_behind(inner: &Arc<Inner>, st: &Arc<SubTask>) -> Result<bool, StoreError> {
    let todo: Vec<(String, i64, usize)> = {
        let q = st.q.lock().expect("queue lock");
        let room = q.room();
        if room == 0 {
            return Ok(false);
        }
        q.topics
            .iter()
            .filter(|(_, p)| p.behind)
            .map(|(t, p)| (t.clone(), p.loaded_upto, room.min(PAGE)))
            .collect()
    };
    let mut more = false;
    for (topic, after, limit) in todo {
        let page = inner.store.sub_backlog(&topic, after, limit as u32).await?;
        let full = page.len() >= limit;
        let msgs: Vec<_> = page.into_iter().map(Arc::new).collect();
        let now = now_ms();
        let mut q = st.q.lock().expect("queue lock");
        let Some(pos) = q.topics.get_mut(&topic) else {
            continue;
        };
        if pos.loaded_upto != after {
            // Purged meanwhile: read again from the new place.
            more = true;
            continue;
        }
        pos.behind = false;
        q.add_log(&topic, &msgs, now, true);
        if full && let Some(p) = q.topics.get_mut(&topic) {
            p.behind = true;
            more |= q.room() > 0;
        }
        if !msgs.is_empty() {
            st.arrived.notify_waiters();
        }
    }
    Ok(more)
}

/// Writes what was done: dead letters first (a message leaves the log's reach only once
/// it is among them), then the requeued dead letters delivered, then the cursors (only
/// while this server holds the lease). False when the lease is gone.
pub(super) async fn flush(inner: &Arc<Inner>, st: &Arc<SubTask>) -> Result<bool, StoreError> {
    let _one = st.flushing.lock().await;
    let sub = st.sub();
    let (dying, dead_done) = {
        let mut q = st.q.lock().expect("queue lock");
        (
            std::mem::take(&mut q.dying),
            std::mem::take(&mut q.dead_done),
        )
    };
    let now = now_ms();
    for (i, d) in dying.iter().enumerate() {
        if let Err(e) = inner
            .store
            .sub_dead_put(&sub.sub_key, &d.msg, d.attempts, &d.reason, now)
            .await
        {
            let mut q = st.q.lock().expect("queue lock");
            q.dead_written(&dying[..i]);
            q.dying.extend(dying[i..].iter().cloned());
            q.dead_done.extend(dead_done);
            return Err(e);
        }
    }
    if !dying.is_empty() {
        st.q.lock().expect("queue lock").dead_written(&dying);
        inner
            .metrics
            .pubsub
            .dead_lettered(&sub.sub_key, dying.len() as u64);
        tracing::info!(sub_key = %sub.sub_key, n = dying.len(), "pubsub: messages dead-lettered");
        if let Some(dlt) = &sub.dead_letter_topic {
            copy_to_dead_letter_topic(inner, dlt, &dying);
        }
    }
    for (i, id) in dead_done.iter().enumerate() {
        if let Err(e) = inner.store.sub_dead_delete(&sub.sub_key, id).await {
            st.q.lock()
                .expect("queue lock")
                .dead_done
                .extend(dead_done[i..].iter().cloned());
            return Err(e);
        }
    }
    let rows = {
        let mut q = st.q.lock().expect("queue lock");
        if !q.dirty {
            return Ok(true);
        }
        q.dirty = false;
        q.cursor_rows()
    };
    match inner
        .store
        .sub_cursors_save(&sub.sub_key, &inner.server, &rows, now)
        .await
    {
        Ok(held) => Ok(held),
        Err(e) => {
            st.q.lock().expect("queue lock").dirty = true;
            Err(e)
        }
    }
}

/// Publishes a copy of each dead letter to the subscription's `dead_letter_topic` (in the
/// background: the dead letters themselves are stored already).
fn copy_to_dead_letter_topic(inner: &Arc<Inner>, topic: &str, dying: &[super::queue::Dying]) {
    let inner = inner.clone();
    let topic = topic.to_owned();
    let msgs: Vec<NewMsg> = dying
        .iter()
        .map(|d| NewMsg {
            data: d.msg.data.clone(),
            mime_type: Some(d.msg.mime_type.clone()),
            priority: Some(d.msg.priority),
            expiration_ms: None,
            has_gd: None,
            correl_id: d.msg.correl_id.clone(),
            in_reply_to: Some(d.msg.msg_id.clone()),
            ext_client_id: d.msg.ext_client_id.clone(),
        })
        .collect();
    tokio::spawn(async move {
        let caller = Caller::Service("pubsub.dead-letter".into());
        if let Err(e) = crate::pubsub::publish::publish(&inner, &caller, &topic, msgs).await {
            tracing::warn!(%topic, "pubsub: copying dead letters to the dead letter topic failed: {e}");
        }
    });
}
