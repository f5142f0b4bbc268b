//! The publish path (docs/PUBSUB.md "Publishing"): a publish is checked and its messages
//! built here, in the caller's task; GD messages are queued to this server's one flusher,
//! which takes everything queued (up to [`FLUSH_MSGS`] messages / [`FLUSH_BYTES`]) and
//! appends it in one store transaction (group commit), answers each publisher after the
//! COMMIT, and only then hands the batch to the fanout and the peers. Non-GD messages are
//! not stored: they go to the fanout and the peers at once. Also the committed-batch frame
//! of the cluster bus, and the topics' figures.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use super::{Caller, Committed, Inner, NewMsg, PubsubError, TopicStats, now_ms};
use crate::model::pubsub::{
    Access, Message, OnFull, OnNoSubs, PRIORITY_DEFAULT, PRIORITY_MAX, PRIORITY_MIN,
};
use crate::store::pubsub_log::{AppendError, TopicAppend};

/// The most messages one flush appends (more waits for the next flush).
pub const FLUSH_MSGS: usize = 2_000;
/// The most data one flush appends, bytes (one publish larger than this is flushed alone).
pub const FLUSH_BYTES: usize = 4 * 1024 * 1024;
/// The most messages one publish may carry.
pub const MAX_MSGS_PER_PUBLISH: usize = 10_000;
/// The most data one publish may carry, bytes (twice the largest message a topic allows).
pub const MAX_BYTES_PER_PUBLISH: u64 = 32 * 1024 * 1024;
/// The longest `correl_id`, `in_reply_to` or `ext_client_id`, bytes.
pub const MAX_FIELD_LEN: usize = 1024;
/// The longest `mime_type`, bytes.
pub const MAX_MIME_LEN: usize = 200;
/// The longest expiration a publish may give, ms (one year).
pub const MAX_EXPIRATION_MS: u64 = 365 * 24 * 3600 * 1000;
/// How long a flush waits for the store: past it the flush's outcome is unknown and its
/// publishers hear so (without it one store that stops answering would hang every GD
/// publish of the server).
/// Below the HTTP request timeout's default (30 s), so that a REST publisher hears what
/// became of its publish rather than a bare 504.
const FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// What a publisher is told when its flush failed before COMMIT.
pub const NOT_STORED: &str = "the message store failed: the messages were not stored";
/// What a publisher is told when its flush failed at or after COMMIT, or timed out.
pub const OUTCOME_UNKNOWN: &str = "the message store failed while committing the publish: its \
                                   outcome is unknown (the messages may have been stored and \
                                   may be delivered)";
/// Publishes queued for the flusher before a publisher waits for room: the queue is
/// bounded, as every queue of the server is.
const QUEUE: usize = 4_096;
/// How long a topic's floor read by a flush may stand in for the store's (a floor only
/// rises, so an old one overstates the depth; within this a flush that fits under the old
/// floor skips reading it). Bounds how late a cursor placed below the floor (a pattern
/// subscription's on a topic made later) is seen by the depth check.
const FLOOR_FRESH: std::time::Duration = std::time::Duration::from_secs(1);

/// Topics' floors as the flusher last read them: (floor, when).
type Floors = HashMap<String, (i64, std::time::Instant)>;

/// The data one bus frame of committed messages carries at most (a message is at most
/// 16 MiB, a frame at most 64 MiB).
const FRAME_DATA: usize = 16 * 1024 * 1024;

/// One publish's GD messages, waiting for the flusher.
struct Job {
    topic: String,
    refuse_past: Option<u64>,
    /// `on_no_subs: drop` and no subscription in this server's definitions: the flush
    /// drops the messages unless the topic has a cursor in the store.
    drop_unsubscribed: bool,
    msgs: Vec<Message>,
    bytes: usize,
    /// Ok(true): stored; Ok(false): accepted and dropped (no subscription).
    answer: oneshot::Sender<Result<bool, PubsubError>>,
    /// Its share of [`QUEUE_BUDGET_KIB`], given back when its flush ends.
    budget: tokio::sync::OwnedSemaphorePermit,
}

/// The publish data (KiB) queued for the flusher or in its flush at most: past it a
/// publish waits for room (bounded by its caller's own timeout), so publishers faster than
/// the store cannot grow the server's memory without bound. Above
/// [`MAX_BYTES_PER_PUBLISH`], so one publish always fits.
const QUEUE_BUDGET_KIB: usize = 256 * 1024;

/// This server's publish queue and the topics' publish figures.
pub struct Publisher {
    tx: mpsc::Sender<Job>,
    budget: Arc<tokio::sync::Semaphore>,
    /// Taken by the flusher when the broker starts.
    rx: Mutex<Option<mpsc::Receiver<Job>>>,
    figures: Mutex<HashMap<String, Figures>>,
}

impl Default for Publisher {
    fn default() -> Publisher {
        Publisher::new()
    }
}

impl Publisher {
    pub fn new() -> Publisher {
        let (tx, rx) = mpsc::channel(QUEUE);
        Publisher {
            tx,
            budget: Arc::new(tokio::sync::Semaphore::new(QUEUE_BUDGET_KIB)),
            rx: Mutex::new(Some(rx)),
            figures: Mutex::new(HashMap::new()),
        }
    }

    fn count(&self, topic: &str, f: impl FnOnce(&mut Figures)) {
        let mut all = self.figures.lock().expect("figures lock");
        match all.get_mut(topic) {
            Some(x) => f(x),
            None => f(all.entry(topic.to_owned()).or_default()),
        }
    }
}

/// A topic's publish figures on this server since it started.
#[derive(Debug, Default, Clone)]
struct Figures {
    published: u64,
    refused_full: u64,
    dropped: u64,
    rate: Rate,
}

/// Messages per second over the last minute: 60 one-second buckets, each stamped with the
/// second it counts (a bucket of an older second counts as empty).
#[derive(Debug, Clone)]
struct Rate {
    counts: [u64; 60],
    secs: [i64; 60],
}

impl Default for Rate {
    fn default() -> Rate {
        Rate {
            counts: [0; 60],
            secs: [i64::MIN; 60],
        }
    }
}

impl Rate {
    fn add(&mut self, now_ms: i64, n: u64) {
        let s = now_ms.div_euclid(1000);
        let i = s.rem_euclid(60) as usize;
        if self.secs[i] != s {
            self.secs[i] = s;
            self.counts[i] = 0;
        }
        self.counts[i] += n;
    }

    fn per_sec(&self, now_ms: i64) -> f64 {
        let s = now_ms.div_euclid(1000);
        let sum: u64 = (0..60)
            .filter(|i| self.secs[*i] > s - 60 && self.secs[*i] <= s)
            .map(|i| self.counts[i])
            .sum();
        sum as f64 / 60.0
    }
}

/// A new msg_id: `zpsm` and 24 lower-case hex digits (12 random bytes).
pub fn new_msg_id() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let b = crate::random::random_bytes::<12>();
    let mut s = String::with_capacity(28);
    s.push_str("zpsm");
    for x in b {
        s.push(HEX[(x >> 4) as usize] as char);
        s.push(HEX[(x & 15) as usize] as char);
    }
    s
}

/// A metadata field: at most `max` bytes, no control character (PostgreSQL's TEXT refuses
/// NUL, which would fail the whole flush, other publishers' messages with it).
fn check_field(i: usize, name: &str, v: Option<&str>, max: usize) -> Result<(), PubsubError> {
    match v {
        Some(v) if v.len() > max => Err(PubsubError::Invalid(format!(
            "message {i}: {name} is longer than {max} bytes"
        ))),
        Some(v) if v.chars().any(char::is_control) => Err(PubsubError::Invalid(format!(
            "message {i}: {name} contains a control character"
        ))),
        _ => Ok(()),
    }
}

/// The topic label of the publish metrics: a defined topic's name, else `_undefined` (a
/// caller must not grow the metrics with names of its choosing).
fn metric_topic<'a>(inner: &Inner, topic: &'a str) -> &'a str {
    if inner
        .defs
        .read()
        .expect("defs lock")
        .topics
        .contains_key(topic)
    {
        topic
    } else {
        "_undefined"
    }
}

pub(crate) async fn publish(
    inner: &Arc<Inner>,
    caller: &Caller,
    topic: &str,
    msgs: Vec<NewMsg>,
) -> Result<Vec<String>, PubsubError> {
    let n = msgs.len() as u64;
    let result = publish_checked(inner, caller, topic, msgs).await;
    let m = &inner.metrics.pubsub;
    match &result {
        Ok((_, stored, others)) => {
            m.published(topic, true, *stored);
            m.published(topic, false, *others);
        }
        Err(e) => m.refused(metric_topic(inner, topic), e.code(), n),
    }
    result.map(|(ids, _, _)| ids)
}

/// A publish: its msg_ids, how many of its messages were stored (GD), how many not
/// (non-GD, or dropped for want of a subscription).
async fn publish_checked(
    inner: &Arc<Inner>,
    caller: &Caller,
    topic: &str,
    msgs: Vec<NewMsg>,
) -> Result<(Vec<String>, u64, u64), PubsubError> {
    let defs = inner.defs.read().expect("defs lock").clone();
    // Permissions first: a caller that may not publish there learns nothing of the topic.
    if !defs.permits(caller, Access::Publish, topic) {
        return Err(PubsubError::Forbidden(format!(
            "{} may not publish to topic {topic}",
            caller.label(&defs)
        )));
    }
    let t = defs
        .topics
        .get(topic)
        .cloned()
        .ok_or_else(|| PubsubError::NoTopic(topic.to_owned()))?;
    if msgs.is_empty() {
        return Err(PubsubError::Invalid(format!(
            "a publish to topic {topic} needs at least one message"
        )));
    }
    if msgs.len() > MAX_MSGS_PER_PUBLISH {
        return Err(PubsubError::Invalid(format!(
            "a publish to topic {topic} carries {} messages, more than {MAX_MSGS_PER_PUBLISH}",
            msgs.len()
        )));
    }
    let mut total = 0u64;
    for (i, m) in msgs.iter().enumerate() {
        let size = m.data.len() as u64;
        if size > t.max_message_bytes {
            return Err(PubsubError::TooLarge {
                topic: topic.to_owned(),
                size,
                max: t.max_message_bytes,
            });
        }
        total += size;
        if let Some(p) = m.priority
            && !(PRIORITY_MIN..=PRIORITY_MAX).contains(&p)
        {
            return Err(PubsubError::Invalid(format!(
                "message {i}: priority {p} is not from {PRIORITY_MIN} to {PRIORITY_MAX}"
            )));
        }
        if m.expiration_ms == Some(0) {
            return Err(PubsubError::Invalid(format!(
                "message {i}: expiration must be at least 1 ms (leave it out for the topic's)"
            )));
        }
        if let Some(e) = m.expiration_ms
            && e > MAX_EXPIRATION_MS
        {
            return Err(PubsubError::Invalid(format!(
                "message {i}: expiration {e} ms is more than one year ({MAX_EXPIRATION_MS} ms)"
            )));
        }
        check_field(i, "mime_type", m.mime_type.as_deref(), MAX_MIME_LEN)?;
        check_field(i, "correl_id", m.correl_id.as_deref(), MAX_FIELD_LEN)?;
        check_field(i, "in_reply_to", m.in_reply_to.as_deref(), MAX_FIELD_LEN)?;
        check_field(
            i,
            "ext_client_id",
            m.ext_client_id.as_deref(),
            MAX_FIELD_LEN,
        )?;
    }
    if total > MAX_BYTES_PER_PUBLISH {
        return Err(PubsubError::Invalid(format!(
            "a publish to topic {topic} carries {total} bytes, more than {MAX_BYTES_PER_PUBLISH}"
        )));
    }

    let now = now_ms();
    let by = caller.label(&defs);
    let n = msgs.len() as u64;
    let mut ids = Vec::with_capacity(msgs.len());
    let mut gd = Vec::new();
    let mut non_gd = Vec::new();
    for m in msgs {
        let msg_id = new_msg_id();
        ids.push(msg_id.clone());
        let has_gd = m.has_gd.unwrap_or(t.has_gd);
        let msg = Message {
            topic: t.name.clone(),
            seq: 0,
            msg_id,
            pub_time_ms: now,
            expires_at_ms: m
                .expiration_ms
                .or(t.expiration_ms)
                .map(|e| now.saturating_add(i64::try_from(e).unwrap_or(i64::MAX))),
            priority: m.priority.unwrap_or(PRIORITY_DEFAULT),
            has_gd,
            mime_type: m.mime_type.unwrap_or_else(|| "text/plain".to_owned()),
            correl_id: m.correl_id,
            in_reply_to: m.in_reply_to,
            ext_client_id: m.ext_client_id,
            published_by: by.clone(),
            data: m.data,
        };
        if has_gd {
            gd.push(msg)
        } else {
            non_gd.push(msg)
        }
    }
    let pubs = &inner.publisher;
    let unsubscribed = defs.subs_of(topic).is_empty();
    if unsubscribed {
        // Non-GD ones live in memory only, where no subscription holds them: dropped.
        // GD ones with `keep` are kept for the first subscription; with `drop` the flush
        // decides: a subscription just made on another server (not yet in this server's
        // definitions) already has its cursor in the store, and an acknowledged message
        // must reach it.
        let d = non_gd.len() as u64;
        if d > 0 {
            pubs.count(topic, |f| f.dropped += d);
        }
        non_gd.clear();
    }
    let gd_n = gd.len() as u64;
    let mut stored = 0;
    if !gd.is_empty() {
        let (answer, answered) = oneshot::channel();
        let bytes: usize = gd.iter().map(|m| m.data.len()).sum();
        let kib = bytes.div_ceil(1024).clamp(1, QUEUE_BUDGET_KIB) as u32;
        let budget = pubs
            .budget
            .clone()
            .acquire_many_owned(kib)
            .await
            .expect("the publish budget is never closed");
        let job = Job {
            topic: t.name.clone(),
            refuse_past: (t.on_full == OnFull::Refuse).then_some(t.max_depth_gd),
            drop_unsubscribed: unsubscribed && t.on_no_subs == OnNoSubs::Drop,
            bytes,
            msgs: gd,
            answer,
            budget,
        };
        let stopping = || PubsubError::Unavailable("the server is stopping".into());
        pubs.tx.send(job).await.map_err(|_| stopping())?;
        match answered.await.map_err(|_| stopping())? {
            Ok(true) => stored = gd_n,
            Ok(false) => pubs.count(topic, |f| f.dropped += gd_n),
            Err(e) => {
                if matches!(e, PubsubError::Full(_)) {
                    // Only GD messages are refused for depth.
                    pubs.count(topic, |f| f.refused_full += gd_n);
                }
                return Err(e);
            }
        }
    }
    if !non_gd.is_empty() {
        hand_over(
            inner,
            Committed {
                server: inner.server.clone(),
                msgs: non_gd.into_iter().map(Arc::new).collect(),
            },
        );
    }
    pubs.count(topic, |f| {
        f.published += n;
        f.rate.add(now, n);
    });
    Ok((ids, stored, n - stored))
}

/// Hands committed (or accepted non-GD) messages to this server's delivery tasks and to
/// every peer's.
fn hand_over(inner: &Inner, batch: Committed) {
    if let Some(peers) = inner.peers.get() {
        for frame in bus_frames(&batch) {
            peers.send_committed(frame);
        }
    }
    inner.fanout.send(Arc::new(batch));
}

/// The batch as bus frames of at most [`FRAME_DATA`] data each (one message larger than
/// that goes alone); each keeps its topics' seqs in order.
fn bus_frames(batch: &Committed) -> Vec<Bytes> {
    let mut frames = Vec::new();
    let mut start = 0;
    let mut size = 0;
    for (i, m) in batch.msgs.iter().enumerate() {
        if i > start && size + m.data.len() > FRAME_DATA {
            frames.push(encode_msgs(&batch.server, &batch.msgs[start..i]));
            start = i;
            size = 0;
        }
        size += m.data.len();
    }
    if start < batch.msgs.len() {
        frames.push(encode_msgs(&batch.server, &batch.msgs[start..]));
    }
    frames
}

/// Starts the flusher (once).
pub(crate) fn start(inner: &Arc<Inner>, shutdown: tokio::sync::watch::Receiver<bool>) {
    let Some(rx) = inner.publisher.rx.lock().expect("rx lock").take() else {
        return;
    };
    tokio::spawn(flusher(inner.clone(), rx, shutdown));
}

/// Flushes at most this many at once. One: two flushes in flight commit in an order the
/// flusher cannot see (whichever takes a topic's seq row first numbers first), so their
/// hand-overs could reach the fanout out of seq order (a delivery task would then read
/// the store for the "gap"); measured here under load, a second flush in flight did not
/// raise throughput measurably either. The hand-over chain below keeps flush order should
/// this be raised.
const IN_FLIGHT: usize = 1;

/// Takes what is queued, flushes it, and again ([`IN_FLIGHT`] flushes at once); at
/// shutdown it stops taking publishes, flushes those already queued (their publishers get
/// their answer), waits for the flushes under way, then ends.
async fn flusher(
    inner: Arc<Inner>,
    mut rx: mpsc::Receiver<Job>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut held: Option<Job> = None;
    let floors = Arc::new(Mutex::new(Floors::new()));
    let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let mut running = tokio::task::JoinSet::new();
    // The previous flush's hand-over: each flush hands over after it, so the fanout sees
    // a topic's batches in seq order.
    let mut previous: Option<oneshot::Receiver<()>> = None;
    let mut spawn = |batch: Vec<Job>, slot: tokio::sync::OwnedSemaphorePermit| {
        let (done, done_rx) = oneshot::channel::<()>();
        let after = previous.replace(done_rx);
        let (inner, floors) = (inner.clone(), floors.clone());
        // The flushes that ended are reaped here, each loop pass: a JoinSet keeps every
        // finished task's result until it is joined, and a panic would go unseen.
        while let Some(r) = running.try_join_next() {
            reaped(r);
        }
        running.spawn(async move {
            flush(&inner, batch, &floors, after).await;
            drop(done);
            drop(slot);
        });
    };
    loop {
        let first = match held.take() {
            Some(j) => j,
            None => tokio::select! {
                j = rx.recv() => match j {
                    Some(j) => j,
                    None => break,
                },
                _ = shutdown.wait_for(|s| *s) => break,
            },
        };
        // A free slot first: publishes keep queuing meanwhile and go in this flush.
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .expect("the flush slots are never closed");
        let (batch, next) = take_batch(first, &mut rx);
        held = next;
        spawn(batch, slot);
    }
    // Stopping: no new publish gets in (its publisher hears "stopping"), the queued ones
    // are flushed and answered.
    rx.close();
    let mut n = 0;
    loop {
        let first = match held.take() {
            Some(j) => j,
            None => match rx.try_recv() {
                Ok(j) => j,
                Err(_) => break,
            },
        };
        n += 1;
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .expect("the flush slots are never closed");
        let (batch, next) = take_batch(first, &mut rx);
        n += batch.len() - 1;
        held = next;
        spawn(batch, slot);
    }
    while let Some(r) = running.join_next().await {
        reaped(r);
    }
    if n > 0 {
        info!(
            publishes = n,
            "pubsub: flushed the queued publishes before stopping"
        );
    }
}

/// A flush task's end: a panic is logged (its publishers heard "stopping", as their
/// answer channels were dropped).
fn reaped(r: Result<(), tokio::task::JoinError>) {
    if let Err(e) = r
        && e.is_panic()
    {
        error!(error = %e, "pubsub: a flush panicked: its publishes are not acknowledged");
    }
}

/// `first` and whatever else is queued now, up to the flush limits; the job that did not
/// fit (the first of the next flush).
fn take_batch(first: Job, rx: &mut mpsc::Receiver<Job>) -> (Vec<Job>, Option<Job>) {
    let mut msgs = first.msgs.len();
    let mut bytes = first.bytes;
    let mut batch = vec![first];
    while msgs < FLUSH_MSGS && bytes < FLUSH_BYTES {
        let Ok(j) = rx.try_recv() else { break };
        if msgs + j.msgs.len() > FLUSH_MSGS || bytes + j.bytes > FLUSH_BYTES {
            return (batch, Some(j));
        }
        msgs += j.msgs.len();
        bytes += j.bytes;
        batch.push(j);
    }
    (batch, None)
}

/// Appends the jobs' messages in one transaction, answers each job, then hands what was
/// committed to the fanout and the peers. A store failure fails every job of the flush:
/// nothing of it is acknowledged or delivered.
async fn flush(
    inner: &Inner,
    jobs: Vec<Job>,
    floors: &Mutex<Floors>,
    after: Option<oneshot::Receiver<()>>,
) {
    let mut appends: Vec<TopicAppend> = Vec::new();
    let mut by_topic: HashMap<String, usize> = HashMap::new();
    // For each job: (its append, its group there) and its answer.
    let mut answers = Vec::with_capacity(jobs.len());
    // The jobs' budget goes back when the flush ends (its messages are then handed over
    // or dropped).
    let mut budget = Vec::with_capacity(jobs.len());
    for j in jobs {
        budget.push(j.budget);
        let a = *by_topic.entry(j.topic.clone()).or_insert_with(|| {
            let known_floor = floors
                .lock()
                .expect("floors lock")
                .get(&j.topic)
                .filter(|(_, at)| at.elapsed() < FLOOR_FRESH)
                .map(|(f, _)| *f);
            appends.push(TopicAppend {
                topic: j.topic.clone(),
                refuse_past: j.refuse_past,
                known_floor,
                groups: Vec::new(),
                drop_unsubscribed: j.drop_unsubscribed,
                dropped: false,
            });
            appends.len() - 1
        });
        appends[a].groups.push(j.msgs);
        answers.push((a, appends[a].groups.len() - 1, j.answer, j.topic));
    }
    let given: Vec<Option<i64>> = appends.iter().map(|a| a.known_floor).collect();
    let started = std::time::Instant::now();
    let result = match tokio::time::timeout(
        FLUSH_TIMEOUT,
        inner.store.append_log(&mut appends, now_ms()),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => {
            // Dropping the append rolls back a transaction not yet committed, but the
            // store may have been at its COMMIT: nobody knows. No seq is handed on.
            for a in appends.iter_mut() {
                for m in a.groups.iter_mut().flatten() {
                    m.seq = 0;
                }
            }
            Err(AppendError {
                error: crate::store::StoreError::Invalid(format!(
                    "the store did not answer within {} s",
                    FLUSH_TIMEOUT.as_secs()
                )),
                unknown_outcome: true,
            })
        }
    };
    inner.metrics.pubsub.flushed(started.elapsed());
    for (a, given) in appends.iter().zip(given) {
        // A floor that changed was read in this flush.
        if let Some(f) = a.known_floor
            && Some(f) != given
        {
            floors
                .lock()
                .expect("floors lock")
                .insert(a.topic.clone(), (f, std::time::Instant::now()));
        }
    }
    match result {
        Err(e) => {
            let n: usize = appends
                .iter()
                .map(|a| a.groups.iter().map(Vec::len).sum::<usize>())
                .sum();
            warn!(error = %e, messages = n, unknown_outcome = e.unknown_outcome,
                "pubsub: a flush failed: its publishes are not acknowledged");
            // The store's own text stays in the log: publishers learn what it means to them.
            let e = PubsubError::Unavailable(if e.unknown_outcome {
                OUTCOME_UNKNOWN.to_owned()
            } else {
                NOT_STORED.to_owned()
            });
            for (_, _, answer, _) in answers {
                let _ = answer.send(Err(e.clone()));
            }
            // The chain of hand-overs goes on in order past this flush.
            if let Some(previous) = after {
                let _ = previous.await;
            }
        }
        Ok(accepted) => {
            for (a, g, answer, topic) in answers {
                let _ = answer.send(if accepted[a][g] {
                    Ok(!appends[a].dropped)
                } else {
                    Err(PubsubError::Full(topic))
                });
            }
            // Per topic, the accepted groups in order: their seqs are contiguous.
            let mut msgs = Vec::new();
            appends.sort_by(|x, y| x.topic.cmp(&y.topic));
            for a in appends {
                for g in a.groups {
                    if g.first().is_some_and(|m| m.seq > 0) {
                        msgs.extend(g.into_iter().map(Arc::new));
                    }
                }
            }
            if let Some(previous) = after {
                // Its end, not its success: a flush that failed hands nothing over.
                let _ = previous.await;
            }
            if !msgs.is_empty() {
                hand_over(
                    inner,
                    Committed {
                        server: inner.server.clone(),
                        msgs,
                    },
                );
            }
        }
    }
}

/// The frame's version (its first byte).
const FRAME_V1: u8 = 1;

/// Encodes a committed batch for the bus: binary, the data raw (never base64).
///
/// Version byte 1, the server (u16 length + UTF-8), the count (u32), then per message:
/// topic (u16 + bytes), seq, pub_time, expires_at (i64 BE each; `i64::MIN`: never),
/// priority (u8), flags (u8: 1 has_gd, 2 correl_id, 4 in_reply_to, 8 ext_client_id),
/// msg_id (u8 + bytes), mime_type (u16 + bytes), the optional strings present (u16 +
/// bytes each), published_by (u16 + bytes), data (u32 + bytes).
pub fn encode_committed(batch: &Committed) -> Bytes {
    encode_msgs(&batch.server, &batch.msgs)
}

fn encode_msgs(server: &str, msgs: &[Arc<Message>]) -> Bytes {
    let size: usize = msgs
        .iter()
        .map(|m| {
            64 + m.topic.len()
                + m.msg_id.len()
                + m.mime_type.len()
                + m.published_by.len()
                + m.correl_id.as_ref().map_or(0, String::len)
                + m.in_reply_to.as_ref().map_or(0, String::len)
                + m.ext_client_id.as_ref().map_or(0, String::len)
                + m.data.len()
        })
        .sum();
    let mut out = BytesMut::with_capacity(8 + server.len() + size);
    out.put_u8(FRAME_V1);
    put_str16(&mut out, server);
    out.put_u32(msgs.len() as u32);
    for m in msgs {
        put_str16(&mut out, &m.topic);
        out.put_i64(m.seq);
        out.put_i64(m.pub_time_ms);
        out.put_i64(m.expires_at_ms.unwrap_or(i64::MIN));
        out.put_u8(m.priority);
        let flags = u8::from(m.has_gd)
            | (u8::from(m.correl_id.is_some()) << 1)
            | (u8::from(m.in_reply_to.is_some()) << 2)
            | (u8::from(m.ext_client_id.is_some()) << 3);
        out.put_u8(flags);
        out.put_u8(m.msg_id.len().min(255) as u8);
        out.put_slice(&m.msg_id.as_bytes()[..m.msg_id.len().min(255)]);
        put_str16(&mut out, &m.mime_type);
        for s in [&m.correl_id, &m.in_reply_to, &m.ext_client_id]
            .into_iter()
            .flatten()
        {
            put_str16(&mut out, s);
        }
        put_str16(&mut out, &m.published_by);
        out.put_u32(m.data.len() as u32);
        out.put_slice(&m.data);
    }
    out.freeze()
}

/// A string of at most 65,535 bytes (every field the frame carries is checked far below
/// that at publish; a longer one would be cut at a character boundary).
fn put_str16(out: &mut BytesMut, s: &str) {
    let mut end = s.len().min(u16::MAX as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.put_u16(end as u16);
    out.put_slice(&s.as_bytes()[..end]);
}

/// Decodes [`encode_committed`]'s frame; each message's data is its own copy.
pub fn decode_committed(frame: &[u8]) -> Result<Committed, String> {
    let mut r = Reader(Bytes::copy_from_slice(frame));
    let v = r.u8("version")?;
    if v != FRAME_V1 {
        return Err(format!("committed frame version {v} is not {FRAME_V1}"));
    }
    let server = r.str16("server")?;
    let n = r.u32("count")? as usize;
    // Each message takes at least 36 bytes: a count beyond what the frame holds is a lie.
    if n > r.0.len() / 36 + 1 {
        return Err(format!(
            "committed frame claims {n} messages in {} bytes",
            frame.len()
        ));
    }
    let mut msgs = Vec::with_capacity(n);
    for i in 0..n {
        let at = |e: String| format!("committed frame, message {i}: {e}");
        let topic = r.str16("topic").map_err(at)?;
        let seq = r.i64("seq").map_err(at)?;
        let pub_time_ms = r.i64("pub_time").map_err(at)?;
        let expires = r.i64("expires_at").map_err(at)?;
        let priority = r.u8("priority").map_err(at)?;
        let flags = r.u8("flags").map_err(at)?;
        let id_len = r.u8("msg_id length").map_err(at)? as usize;
        let msg_id = r.string(id_len, "msg_id").map_err(at)?;
        let mime_type = r.str16("mime_type").map_err(at)?;
        let mut opt = |bit: u8, what: &str| -> Result<Option<String>, String> {
            if flags & bit != 0 {
                r.str16(what).map(Some)
            } else {
                Ok(None)
            }
        };
        let correl_id = opt(2, "correl_id").map_err(at)?;
        let in_reply_to = opt(4, "in_reply_to").map_err(at)?;
        let ext_client_id = opt(8, "ext_client_id").map_err(at)?;
        let published_by = r.str16("published_by").map_err(at)?;
        let len = r.u32("data length").map_err(at)? as usize;
        // A copy: one message kept by a delivery task must not pin the whole frame (up to
        // 64 MiB) in memory.
        let data = Bytes::copy_from_slice(&r.take(len, "data").map_err(at)?);
        msgs.push(Arc::new(Message {
            topic,
            seq,
            msg_id,
            pub_time_ms,
            expires_at_ms: (expires != i64::MIN).then_some(expires),
            priority,
            has_gd: flags & 1 != 0,
            mime_type,
            correl_id,
            in_reply_to,
            ext_client_id,
            published_by,
            data,
        }));
    }
    if !r.0.is_empty() {
        return Err(format!(
            "committed frame has {} bytes after its last message",
            r.0.len()
        ));
    }
    Ok(Committed { server, msgs })
}

/// A peer's message has values this server's publish would have given it: a priority of
/// 1-9 and, when GD, a seq. The delivery tasks rely on both.
fn peer_msg_ok(m: &Message) -> bool {
    (PRIORITY_MIN..=PRIORITY_MAX).contains(&m.priority) && (!m.has_gd || m.seq > 0)
}

/// Reads a frame, bounds checked.
struct Reader(Bytes);

impl Reader {
    fn need(&self, n: usize, what: &str) -> Result<(), String> {
        if self.0.len() < n {
            return Err(format!("ends inside {what}"));
        }
        Ok(())
    }
    fn u8(&mut self, what: &str) -> Result<u8, String> {
        self.need(1, what)?;
        Ok(self.0.get_u8())
    }
    fn u32(&mut self, what: &str) -> Result<u32, String> {
        self.need(4, what)?;
        Ok(self.0.get_u32())
    }
    fn i64(&mut self, what: &str) -> Result<i64, String> {
        self.need(8, what)?;
        Ok(self.0.get_i64())
    }
    fn take(&mut self, n: usize, what: &str) -> Result<Bytes, String> {
        self.need(n, what)?;
        Ok(self.0.split_to(n))
    }
    fn string(&mut self, n: usize, what: &str) -> Result<String, String> {
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
    }
    fn str16(&mut self, what: &str) -> Result<String, String> {
        self.need(2, what)?;
        let n = self.0.get_u16() as usize;
        self.string(n, what)
    }
}

/// A peer's committed batch: into this server's fanout (not on to other peers: every
/// server sends its own batches to every peer).
pub(crate) fn peer_committed(inner: &Arc<Inner>, frame: &[u8]) -> Result<(), String> {
    let mut batch = decode_committed(frame)?;
    let before = batch.msgs.len();
    batch.msgs.retain(|m| peer_msg_ok(m));
    if batch.msgs.len() < before {
        warn!(
            server = %batch.server,
            dropped = before - batch.msgs.len(),
            "pubsub: a peer's committed frame carried messages with impossible values \
             (priority not 1-9, or a GD message without seq): they are dropped"
        );
    }
    if !batch.msgs.is_empty() {
        inner.fanout.send(Arc::new(batch));
    }
    Ok(())
}

pub(crate) async fn topic_stats(inner: &Arc<Inner>) -> Result<Vec<TopicStats>, PubsubError> {
    let defs = inner.defs.read().expect("defs lock").clone();
    let unavailable = |e: crate::store::StoreError| PubsubError::Unavailable(e.to_string());
    let last = inner.store.log_last_seqs().await.map_err(unavailable)?;
    let mins = inner.store.log_min_cursors().await.map_err(unavailable)?;
    let now = now_ms();
    let figures = inner
        .publisher
        .figures
        .lock()
        .expect("figures lock")
        .clone();
    let mut topics: Vec<_> = defs.topics.values().cloned().collect();
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = Vec::with_capacity(topics.len());
    for t in topics {
        let last_seq = last.get(&t.name).copied().unwrap_or(0);
        let depth_gd = match mins.get(&t.name) {
            Some(m) => (last_seq - m).max(0) as u64,
            // No cursor yet: what is kept for the first subscription.
            None if last_seq > 0 => match inner
                .store
                .log_oldest_kept(&t.name, now)
                .await
                .map_err(unavailable)?
            {
                Some(o) => (last_seq - o + 1).max(0) as u64,
                None => 0,
            },
            None => 0,
        };
        let f = figures.get(&t.name).cloned().unwrap_or_default();
        out.push(TopicStats {
            name: t.name.clone(),
            last_seq,
            depth_gd,
            published: f.published,
            rate_1m: f.rate.per_sec(now),
            refused_full: f.refused_full,
            dropped: f.dropped,
            subscriptions: defs
                .subs_of(&t.name)
                .iter()
                .map(|s| s.sub_key.clone())
                .collect(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(i: i64, data: &'static [u8]) -> Arc<Message> {
        Arc::new(Message {
            topic: "/a/b".into(),
            seq: i,
            msg_id: new_msg_id(),
            pub_time_ms: 1_700_000_000_000 + i,
            expires_at_ms: (i % 2 == 0).then_some(1_800_000_000_000),
            priority: (i % 9 + 1) as u8,
            has_gd: i != 0,
            mime_type: "application/json".into(),
            correl_id: (i == 1).then(|| "c".into()),
            in_reply_to: (i == 2).then(|| "zpsm0123".into()),
            ext_client_id: (i == 3).then(|| "é-client".into()),
            published_by: "service:x".into(),
            data: Bytes::from_static(data),
        })
    }

    /// The fanout gets GD messages only once they are in the store, each topic's in seq
    /// order without gap; non-GD ones at once, with seq 0.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_fanout_follows_the_commits_in_order() {
        let dir = std::env::temp_dir().join(format!(
            "oxbus-publish-fanout-{}-{}",
            std::process::id(),
            crate::random::random_hex(4)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let store = crate::store::Store::open(&format!("sqlite:{}", dir.join("o.db").display()))
            .await
            .unwrap();
        let metrics = Arc::new(crate::metrics::Metrics::new(false));
        let key_path = dir.join("key");
        let key = Arc::new(crate::secrets::Key::create(&key_path).unwrap());
        let outgoing = Arc::new(crate::outgoing::Outgoing::new(key, metrics.clone()));
        let b = super::super::Broker::new("s1", store.clone(), metrics.clone(), outgoing);
        b.apply(&crate::model::object::ObjectSet {
            pubsub_topics: serde_json::from_value(serde_json::json!([
                {"name": "/f/a"}, {"name": "/f/b"}, {"name": "/f/n", "has_gd": false}
            ]))
            .unwrap(),
            pubsub_subs: serde_json::from_value(serde_json::json!([
                {"sub_key": "s", "topic": "/f/*", "delivery": {"type": "pull"}}
            ]))
            .unwrap(),
            ..Default::default()
        });
        let mut fanout = b.inner.fanout.subscribe();
        let (stop, rx) = tokio::sync::watch::channel(false);
        b.start(rx);
        let mut tasks = Vec::new();
        for t in 0..8 {
            let b = b.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..20 {
                    let topic = if (t + i) % 2 == 0 { "/f/a" } else { "/f/b" };
                    let m = NewMsg {
                        data: Bytes::from(format!("{t}-{i}")),
                        ..NewMsg::default()
                    };
                    b.publish(&Caller::Service("x".into()), topic, vec![m])
                        .await
                        .unwrap();
                }
            }));
        }
        let mut next: HashMap<String, i64> = HashMap::new();
        let mut seen = 0;
        while seen < 160 {
            let batch = fanout.recv().await.unwrap();
            assert_eq!(batch.server, "s1");
            for m in &batch.msgs {
                let n = next.entry(m.topic.clone()).or_insert(1);
                assert_eq!(m.seq, *n, "{} in seq order without gap", m.topic);
                *n += 1;
                let stored = store.read_range(&m.topic, m.seq, m.seq).await.unwrap();
                assert_eq!(stored.len(), 1, "handed over before its commit");
                assert_eq!(stored[0].msg_id, m.msg_id);
                seen += 1;
            }
        }
        for t in tasks {
            t.await.unwrap();
        }
        let ids = b
            .publish(
                &Caller::Service("x".into()),
                "/f/n",
                vec![NewMsg {
                    data: Bytes::from_static(b"n"),
                    ..NewMsg::default()
                }],
            )
            .await
            .unwrap();
        let batch = fanout.recv().await.unwrap();
        assert_eq!(batch.msgs.len(), 1);
        assert_eq!((batch.msgs[0].seq, batch.msgs[0].has_gd), (0, false));
        assert_eq!(batch.msgs[0].msg_id, ids[0]);
        assert!(store.read_after("/f/n", 0, 10).await.unwrap().is_empty());
        // The metrics: per topic, GD or not; an unknown topic's refusal under `_undefined`.
        let e = b
            .publish(
                &Caller::Service("x".into()),
                "/nope",
                vec![NewMsg::default()],
            )
            .await
            .unwrap_err();
        assert_eq!(e.code(), "no_topic");
        let text = metrics.render().unwrap();
        for line in [
            r#"oxbus_pubsub_published_total{topic="/f/a",gd="true"} 80"#,
            r#"oxbus_pubsub_published_total{topic="/f/n",gd="false"} 1"#,
            r#"oxbus_pubsub_refused_total{topic="_undefined",reason="no_topic"} 1"#,
            "oxbus_pubsub_publish_flush_seconds_count",
        ] {
            assert!(text.contains(line), "{line} in:\n{text}");
        }
        // Every flush gave its publishes' budget back.
        assert_eq!(
            b.inner.publisher.budget.available_permits(),
            QUEUE_BUDGET_KIB
        );
        stop.send(true).unwrap();
        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_committed_batch_crosses_the_bus_unchanged() {
        let batch = Committed {
            server: "srv-1".into(),
            msgs: vec![m(0, b""), m(1, b"{}"), m(2, &[0, 255, 10]), m(3, b"x")],
        };
        let frame = encode_committed(&batch);
        assert_eq!(decode_committed(&frame).unwrap(), batch);
        // The data is in the frame as is.
        assert!(frame.windows(3).any(|w| w == [0, 255, 10]));
        // Every cut is refused, never misread.
        for cut in 0..frame.len() {
            assert!(decode_committed(&frame[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = frame.to_vec();
        longer.push(0);
        assert!(decode_committed(&longer).is_err());
        let mut v2 = frame.to_vec();
        v2[0] = 2;
        assert!(decode_committed(&v2).unwrap_err().contains("version 2"));
    }

    #[test]
    fn impossible_peer_messages_are_refused() {
        let ok = m(1, b"x");
        assert!(peer_msg_ok(&ok));
        assert!(peer_msg_ok(&m(0, b"x")), "non-GD with seq 0");
        for bad in [
            Message {
                priority: 0,
                ..(*ok).clone()
            },
            Message {
                priority: 10,
                ..(*ok).clone()
            },
            Message {
                seq: 0,
                ..(*ok).clone()
            },
        ] {
            assert!(!peer_msg_ok(&bad), "{bad:?}");
        }
    }

    #[test]
    fn msg_ids_have_their_shape() {
        let a = new_msg_id();
        assert_eq!(a.len(), 28);
        assert!(a.starts_with("zpsm"));
        assert!(
            a[4..]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_ne!(a, new_msg_id());
    }

    #[test]
    fn the_rate_counts_the_last_minute() {
        let mut r = Rate::default();
        r.add(1_000, 60);
        r.add(30_500, 60);
        assert_eq!(r.per_sec(30_900), 2.0);
        // 61 s later the first is out of the window, the second still in.
        assert_eq!(r.per_sec(61_000), 1.0);
        assert_eq!(r.per_sec(200_000), 0.0);
    }

    #[test]
    fn big_batches_are_split_into_frames() {
        static BIG: [u8; 9 * 1024 * 1024] = [7; 9 * 1024 * 1024];
        let batch = Committed {
            server: "s".into(),
            msgs: vec![m(1, &BIG), m(2, &BIG), m(3, b"x")],
        };
        let frames = bus_frames(&batch);
        assert_eq!(frames.len(), 2);
        let back: Vec<_> = frames
            .iter()
            .flat_map(|f| decode_committed(f).unwrap().msgs)
            .collect();
        assert_eq!(back, batch.msgs);
    }
}
