//! One subscription's queue in memory: the messages waiting or in flight, in delivery
//! order (priority, highest first, then publish time and seq), and its place in each
//! topic's log (the cursors). Plain data, no I/O: the delivery task (`task.rs`) feeds it
//! from the store and the fanout and writes what it records back to the store.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::model::pubsub::{Message, Retry};
use crate::store::CursorRow;

/// The most messages a subscription keeps in memory; beyond it, the log is read again later
/// (a subscriber that lags far behind costs store reads, not memory).
pub const WINDOW: usize = 10_000;

/// A message's place in delivery order: priority (9 first), publish time, topic, seq, msg_id.
pub type Key = (u8, i64, Arc<str>, i64, String);

fn key_of(m: &Message) -> Key {
    (
        crate::model::pubsub::PRIORITY_MAX - m.priority.min(9),
        m.pub_time_ms,
        Arc::from(m.topic.as_str()),
        m.seq,
        m.msg_id.clone(),
    )
}

/// Where a queued message came from, which says how it is done with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The topic's log (GD): done moves the cursor.
    Log,
    /// In memory only (non-GD): done forgets it.
    Memory,
    /// A requeued dead letter: done deletes its row.
    Dead,
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub msg: Arc<Message>,
    pub source: Source,
    /// Failed deliveries so far.
    pub attempts: u32,
    /// Deliveries so far (a pull handed out counts).
    pub delivery_count: u32,
    /// Not to be delivered before (Unix ms): the backoff after a failure.
    pub not_before: i64,
    /// Handed out and not yet done: until when (pull: the ack deadline; service and push:
    /// while the call runs).
    pub in_flight_until: Option<i64>,
    /// The last failure's text.
    pub last_error: Option<String>,
}

/// The subscription's place in one topic's log.
#[derive(Debug, Clone, Default)]
pub struct TopicPos {
    /// Every message with seq <= this is done with.
    pub acked_upto: i64,
    /// Every message in `(acked_upto, loaded_upto]` is in memory or done.
    pub loaded_upto: i64,
    /// Done above `acked_upto`, as ranges: one old unacked message (or a gap the
    /// retention left) before many acked ones costs one range, not one entry each.
    pub done: Ranges,
    /// Failed attempts of messages above `acked_upto` (kept in the cursor's state, so a
    /// server that takes over goes on counting).
    pub attempts: HashMap<i64, u32>,
    /// The log may hold messages past `loaded_upto` that are not in memory: read it.
    pub behind: bool,
    /// The highest seq known to be in the log.
    pub last_known: i64,
}

/// Seqs as inclusive ranges, start -> end, none touching another.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ranges {
    map: BTreeMap<i64, i64>,
    len: u64,
}

impl Ranges {
    /// Adds `a..=b`.
    pub fn insert_range(&mut self, a: i64, b: i64) {
        if a > b {
            return;
        }
        let (mut lo, mut hi) = (a, b);
        if let Some((&s, &e)) = self.map.range(..=a).next_back()
            && e >= a.saturating_sub(1)
        {
            lo = s;
            hi = hi.max(e);
            self.map.remove(&s);
            self.len -= (e - s + 1) as u64;
        }
        let after: Vec<(i64, i64)> = self
            .map
            .range(a..=b.saturating_add(1))
            .map(|(s, e)| (*s, *e))
            .collect();
        for (s, e) in after {
            hi = hi.max(e);
            self.map.remove(&s);
            self.len -= (e - s + 1) as u64;
        }
        self.map.insert(lo, hi);
        self.len += (hi - lo + 1) as u64;
    }

    pub fn insert(&mut self, seq: i64) {
        self.insert_range(seq, seq);
    }

    pub fn contains(&self, seq: &i64) -> bool {
        self.map
            .range(..=*seq)
            .next_back()
            .is_some_and(|(_, e)| *e >= *seq)
    }

    /// Takes `seq` out: whether it was in.
    pub fn remove(&mut self, seq: &i64) -> bool {
        let seq = *seq;
        let Some((&s, &e)) = self.map.range(..=seq).next_back() else {
            return false;
        };
        if e < seq {
            return false;
        }
        self.map.remove(&s);
        if s < seq {
            self.map.insert(s, seq - 1);
        }
        if seq < e {
            self.map.insert(seq + 1, e);
        }
        self.len -= 1;
        true
    }

    /// How many seqs.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// How many seqs are `<= end`.
    pub fn count_upto(&self, end: i64) -> u64 {
        self.map
            .range(..=end)
            .map(|(s, e)| ((*e).min(end) - s + 1) as u64)
            .sum()
    }

    /// Keeps only the seqs above `x`.
    pub fn retain_above(&mut self, x: i64) {
        let below: Vec<(i64, i64)> = self.map.range(..=x).map(|(s, e)| (*s, *e)).collect();
        for (s, e) in below {
            self.map.remove(&s);
            self.len -= (e - s + 1) as u64;
            if e > x {
                self.map.insert(x + 1, e);
                self.len += (e - x) as u64;
            }
        }
    }

    pub fn ranges(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        self.map.iter().map(|(s, e)| (*s, *e))
    }

    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = i64> + '_ {
        self.ranges().flat_map(|(s, e)| s..=e)
    }
}

/// The cursor's `state` column.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct CursorState {
    /// Done seqs one by one, as written before `done_ranges` (read, never written).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    done: Vec<i64>,
    /// Done seqs as inclusive `[first, last]` ranges.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    done_ranges: Vec<(i64, i64)>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    attempts: BTreeMap<i64, u32>,
}

/// Counters of one subscription on this server (since its task started here).
#[derive(Debug, Clone, Default)]
pub struct Counts {
    pub delivered: u64,
    pub acked: u64,
    pub failed_attempts: u64,
    pub expired: u64,
    pub overflowed: u64,
    pub last_delivery_ms: Option<i64>,
}

/// A message that has just failed its last attempt: to the dead letters.
#[derive(Debug, Clone)]
pub struct Dying {
    pub msg: Arc<Message>,
    pub attempts: u32,
    pub reason: String,
}

/// A topic's non-GD messages in arrival order. A message done with is not searched for
/// and taken out (that cost O(depth) per ack): it stays in `ids` until it reaches the front
/// or the list is compacted, and `live` counts those still queued.
#[derive(Debug, Default)]
struct MemoryList {
    ids: std::collections::VecDeque<String>,
    live: usize,
}

#[derive(Debug, Default)]
pub struct Queue {
    pub topics: HashMap<String, TopicPos>,
    pending: BTreeMap<Key, Entry>,
    by_id: HashMap<String, Key>,
    /// GD entries by (topic, seq).
    by_seq: HashMap<(String, i64), String>,
    /// Non-GD entries per topic, oldest first (to drop past `max_depth_non_gd`).
    memory_by_topic: HashMap<String, MemoryList>,
    pub counts: Counts,
    /// Cursors changed since the last write.
    pub dirty: bool,
    /// To the dead letters (written before the cursor moves past them).
    pub dying: Vec<Dying>,
    /// Requeued dead letters delivered: their rows to delete.
    pub dead_done: Vec<String>,
    /// The task has read its cursors and its first backlog.
    pub loaded: bool,
    /// No entry is due (its ack deadline or backoff ending) before this (Unix ms): a lower
    /// bound, lowered whenever a deadline is set and made exact by a scan only once it is
    /// reached, so that the task's every wake costs O(1), not a scan of the queue. 0 (the
    /// default): unknown.
    due_lb: i64,
}

impl Queue {
    /// Sets a topic's place from its stored cursor.
    pub fn load_cursor(&mut self, row: &CursorRow, last_seq: i64) {
        let state: CursorState = serde_json::from_str(&row.state).unwrap_or_else(|e| {
            tracing::warn!(topic = %row.topic, "pubsub cursor state unreadable, ignored: {e}");
            CursorState::default()
        });
        let pos = TopicPos {
            acked_upto: row.acked_upto,
            loaded_upto: row.acked_upto,
            done: {
                let mut d = Ranges::default();
                for s in state.done {
                    d.insert(s);
                }
                for (a, b) in state.done_ranges {
                    d.insert_range(a, b);
                }
                d.retain_above(row.acked_upto);
                d
            },
            attempts: state
                .attempts
                .into_iter()
                .filter(|(s, _)| *s > row.acked_upto)
                .collect(),
            behind: true,
            last_known: last_seq.max(row.acked_upto),
        };
        self.topics.insert(row.topic.clone(), pos);
    }

    /// The cursors as they are to be stored.
    pub fn cursor_rows(&self) -> Vec<CursorRow> {
        let mut v: Vec<_> = self
            .topics
            .iter()
            .map(|(t, p)| CursorRow {
                topic: t.clone(),
                acked_upto: p.acked_upto,
                state: serde_json::to_string(&CursorState {
                    done: Vec::new(),
                    done_ranges: p.done.ranges().collect(),
                    attempts: p.attempts.iter().map(|(k, v)| (*k, *v)).collect(),
                })
                .expect("cursor state serialises"),
            })
            .collect();
        v.sort_by(|a, b| a.topic.cmp(&b.topic));
        v
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn room(&self) -> usize {
        WINDOW.saturating_sub(self.pending.len())
    }

    pub fn in_flight(&self) -> u64 {
        self.pending
            .values()
            .filter(|e| e.in_flight_until.is_some())
            .count() as u64
    }

    /// GD messages of `topic` in seq order (a committed batch, or a page read from the
    /// log: `from_log`): those not done yet join the queue. False when they do not follow
    /// on from what is loaded, or the window is full (then the topic is behind and the log
    /// is read). In a page of the log a gap is real: those messages left the log (retention)
    /// and are done with.
    pub fn add_log(
        &mut self,
        topic: &str,
        msgs: &[Arc<Message>],
        now: i64,
        from_log: bool,
    ) -> bool {
        let Some(pos) = self.topics.get_mut(topic) else {
            return false;
        };
        if !from_log && pos.behind {
            // The log is to be read first: it holds these too.
            if let Some(m) = msgs.last() {
                pos.last_known = pos.last_known.max(m.seq);
            }
            return false;
        }
        let mut expired = Vec::new();
        let mut added = Vec::new();
        for m in msgs {
            if m.seq <= pos.loaded_upto {
                continue;
            }
            if from_log && m.seq > pos.loaded_upto + 1 && self.pending.len() + added.len() < WINDOW
            {
                if pos.acked_upto == pos.loaded_upto {
                    pos.acked_upto = m.seq - 1;
                    pos.done.retain_above(m.seq - 1);
                    pos.attempts.retain(|s, _| *s > m.seq - 1);
                } else {
                    pos.done.insert_range(pos.loaded_upto + 1, m.seq - 1);
                }
                pos.loaded_upto = m.seq - 1;
                self.dirty = true;
            }
            if m.seq != pos.loaded_upto + 1 || self.pending.len() + added.len() >= WINDOW {
                pos.behind = true;
                pos.last_known = pos.last_known.max(m.seq);
                break;
            }
            pos.loaded_upto = m.seq;
            pos.last_known = pos.last_known.max(m.seq);
            if pos.done.contains(&m.seq) {
                continue;
            }
            if m.expired(now) {
                expired.push(m.seq);
                continue;
            }
            let attempts = pos.attempts.get(&m.seq).copied().unwrap_or(0);
            added.push((m.clone(), attempts));
        }
        let caught_up = !pos.behind;
        for seq in expired {
            self.counts.expired += 1;
            self.done_seq(topic, seq);
        }
        for (m, attempts) in added {
            self.insert(m, Source::Log, attempts);
        }
        caught_up
    }

    /// A non-GD message; past `max_depth` of its topic's in memory, the oldest is dropped.
    pub fn add_memory(&mut self, msg: Arc<Message>, max_depth: u64) {
        let topic = msg.topic.clone();
        let list = self.memory_by_topic.entry(topic.clone()).or_default();
        list.ids.push_back(msg.msg_id.clone());
        list.live += 1;
        self.insert(msg, Source::Memory, 0);
        loop {
            let Some(list) = self.memory_by_topic.get_mut(&topic) else {
                return;
            };
            if list.live as u64 <= max_depth {
                return;
            }
            let Some(id) = list.ids.pop_front() else {
                return;
            };
            // Either still queued (dropped: `remove` counts it out of `live`) or done with
            // already (only its place in the list was left).
            if self.remove(&id).is_some() {
                self.counts.overflowed += 1;
            }
        }
    }

    /// A requeued dead letter.
    pub fn add_dead(&mut self, msg: Arc<Message>) {
        if !self.by_id.contains_key(&msg.msg_id) {
            self.insert(msg, Source::Dead, 0);
        }
    }

    fn insert(&mut self, msg: Arc<Message>, source: Source, attempts: u32) {
        let key = key_of(&msg);
        self.by_id.insert(msg.msg_id.clone(), key.clone());
        if source == Source::Log {
            self.by_seq
                .insert((msg.topic.clone(), msg.seq), msg.msg_id.clone());
        }
        self.pending.insert(
            key,
            Entry {
                msg,
                source,
                attempts,
                delivery_count: attempts,
                not_before: 0,
                in_flight_until: None,
                last_error: None,
            },
        );
    }

    fn remove(&mut self, msg_id: &str) -> Option<Entry> {
        let key = self.by_id.remove(msg_id)?;
        let e = self.pending.remove(&key)?;
        if e.source == Source::Log {
            self.by_seq.remove(&(e.msg.topic.clone(), e.msg.seq));
        }
        if e.source == Source::Memory
            && let Some(l) = self.memory_by_topic.get_mut(&e.msg.topic)
        {
            l.live = l.live.saturating_sub(1);
            if l.live == 0 {
                self.memory_by_topic.remove(&e.msg.topic);
            } else if l.ids.len() > 2 * l.live + 64 {
                // Mostly done-with ids: compacted, so the list stays O(live) (amortised
                // O(1) per message).
                let by_id = &self.by_id;
                l.ids.retain(|id| by_id.contains_key(id));
            }
        }
        Some(e)
    }

    /// Marks a GD seq done and moves the cursor over what is done contiguously.
    fn done_seq(&mut self, topic: &str, seq: i64) {
        let Some(pos) = self.topics.get_mut(topic) else {
            return;
        };
        if seq <= pos.acked_upto {
            return;
        }
        pos.done.insert(seq);
        pos.attempts.remove(&seq);
        while pos.done.remove(&(pos.acked_upto + 1)) {
            pos.acked_upto += 1;
        }
        pos.loaded_upto = pos.loaded_upto.max(pos.acked_upto);
        self.dirty = true;
    }

    /// A message is done with (acked, expired, dead-lettered, overflowed): out of the
    /// queue, its cursor or dead letter row updated. The entry, if it was queued.
    pub fn done(&mut self, msg_id: &str) -> Option<Entry> {
        let e = self.remove(msg_id)?;
        match e.source {
            Source::Log => self.done_seq(&e.msg.topic.clone(), e.msg.seq),
            Source::Dead => {
                self.dead_done.push(e.msg.msg_id.clone());
                self.dirty = true;
            }
            Source::Memory => {}
        }
        Some(e)
    }

    /// Acks a message handed out: whether it was in flight.
    pub fn ack(&mut self, msg_id: &str, now: i64) -> bool {
        let in_flight = self
            .by_id
            .get(msg_id)
            .and_then(|k| self.pending.get(k))
            .is_some_and(|e| e.in_flight_until.is_some());
        if in_flight {
            self.done(msg_id);
            self.counts.acked += 1;
            self.counts.last_delivery_ms = Some(now);
        }
        in_flight
    }

    /// A delivery of `msg_id` failed: its next attempt is after the backoff, or, past the
    /// retry limit, it goes to the dead letters.
    pub fn failed(&mut self, msg_id: &str, reason: &str, retry: &Retry, now: i64) {
        let Some(key) = self.by_id.get(msg_id).cloned() else {
            return;
        };
        self.counts.failed_attempts += 1;
        let (attempts, topic, seq, source) = {
            let e = self.pending.get_mut(&key).expect("indexed entry");
            e.attempts = e.attempts.saturating_add(1);
            e.in_flight_until = None;
            e.last_error = Some(reason.to_owned());
            e.not_before = now.saturating_add(ms_i64(backoff_ms(retry, e.attempts)));
            (e.attempts, e.msg.topic.clone(), e.msg.seq, e.source)
        };
        self.lower_due(now.saturating_add(ms_i64(backoff_ms(retry, attempts))));
        if retry.max_attempts > 0 && attempts >= retry.max_attempts {
            let e = self.remove(msg_id).expect("indexed entry");
            self.dying.push(Dying {
                msg: e.msg,
                attempts,
                reason: reason.to_owned(),
            });
            // The cursor moves past it only once the dead letter is written (`dead_written`).
            self.dirty = true;
        } else if source == Source::Log
            && let Some(pos) = self.topics.get_mut(&topic)
        {
            pos.attempts.insert(seq, attempts);
            self.dirty = true;
        }
    }

    /// The dead letters of `dying` are stored: their messages are done with.
    pub fn dead_written(&mut self, written: &[Dying]) {
        for d in written {
            if d.msg.seq > 0 && d.msg.has_gd {
                self.done_seq(&d.msg.topic.clone(), d.msg.seq);
            }
        }
    }

    /// Up to `max` messages to deliver now, in order, marked in flight until `until`. With
    /// `in_order` (service and push deliveries) it stops at the first message still in
    /// backoff, so that a failing message is not overtaken; expired messages are done with
    /// on the way (counted).
    pub fn take(&mut self, max: usize, now: i64, until: i64, in_order: bool) -> Vec<Entry> {
        // A batch must fit in one IPC frame, whoever takes it (a pull answer, a delivery).
        self.take_capped(
            max,
            crate::pubsub::ops::MAX_BATCH_BYTES,
            now,
            until,
            in_order,
        )
    }

    /// [`Queue::take`], stopping before the message that would bring the data taken past
    /// `max_bytes` (the first message is always taken).
    pub fn take_capped(
        &mut self,
        max: usize,
        max_bytes: usize,
        now: i64,
        until: i64,
        in_order: bool,
    ) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut expired = Vec::new();
        let mut bytes = 0usize;
        for e in self.pending.values_mut() {
            if out.len() >= max {
                break;
            }
            if e.in_flight_until.is_some() {
                if in_order {
                    break;
                }
                continue;
            }
            if e.msg.expired(now) {
                expired.push(e.msg.msg_id.clone());
                continue;
            }
            if e.not_before > now {
                if in_order {
                    break;
                }
                continue;
            }
            if !out.is_empty() && bytes.saturating_add(e.msg.data.len()) > max_bytes {
                break;
            }
            bytes = bytes.saturating_add(e.msg.data.len());
            e.in_flight_until = Some(until);
            self.due_lb = self.due_lb.min(until);
            e.delivery_count = e.delivery_count.saturating_add(1);
            out.push(e.clone());
        }
        for id in expired {
            if self.done(&id).is_some() {
                self.counts.expired += 1;
            }
        }
        self.counts.delivered += out.len() as u64;
        out
    }

    /// Nothing is in flight any more: every message handed out is offered again (its
    /// delivery count kept; a late ack of the earlier hand-out no longer counts).
    pub fn reset_in_flight(&mut self) {
        for e in self.pending.values_mut() {
            e.in_flight_until = None;
        }
    }

    fn lower_due(&mut self, t: i64) {
        self.due_lb = self.due_lb.min(t);
    }

    /// When the next message becomes deliverable or its ack deadline passes (Unix ms); may
    /// be early (then the caller finds nothing due and asks again).
    pub fn next_due(&mut self, now: i64) -> Option<i64> {
        if self.due_lb > now {
            return (self.due_lb != i64::MAX).then_some(self.due_lb);
        }
        let due = self
            .pending
            .values()
            .filter_map(|e| match e.in_flight_until {
                Some(t) => Some(t),
                None if e.not_before > now => Some(e.not_before),
                None => None,
            })
            .min();
        self.due_lb = due.unwrap_or(i64::MAX);
        due
    }

    /// Messages whose ack deadline passed (pull): each is a failed attempt.
    pub fn ack_timeouts(&mut self, retry: &Retry, now: i64) -> usize {
        if self.due_lb > now {
            // No ack deadline is before `due_lb`.
            return 0;
        }
        // One pass: the late ones, and when the next of the others is due.
        let mut late = Vec::new();
        let mut due = i64::MAX;
        for e in self.pending.values() {
            match e.in_flight_until {
                Some(t) if t <= now => late.push(e.msg.msg_id.clone()),
                Some(t) => due = due.min(t),
                None if e.not_before > now => due = due.min(e.not_before),
                None => {}
            }
        }
        for id in &late {
            self.failed(id, "not acked within ack_timeout_ms", retry, now);
            // A pulled message is offered again at once (its backoff is the ack timeout
            // it waited out).
            if let Some(k) = self.by_id.get(id)
                && let Some(e) = self.pending.get_mut(k)
            {
                e.not_before = now;
            }
        }
        // Exact: the late ones are deliverable now (their backoff set by `failed` is not
        // what they wait for).
        self.due_lb = due;
        late.len()
    }

    /// Drops the oldest GD messages of `topic` past `max_depth` waiting (`on_full:
    /// overflow`): how many.
    pub fn overflow(&mut self, topic: &str, max_depth: u64) -> u64 {
        let mut dropped = 0;
        loop {
            let Some(pos) = self.topics.get_mut(topic) else {
                return dropped;
            };
            let waiting = (pos.last_known.saturating_sub(pos.acked_upto).max(0) as u64)
                .saturating_sub(pos.done.len() as u64);
            if waiting <= max_depth {
                return dropped;
            }
            let seq = pos.acked_upto + 1;
            if pos.done.contains(&seq) {
                self.done_seq(topic, seq);
                continue;
            }
            // The oldest waiting message: in memory (dropped from there) or not loaded.
            if let Some(id) = self.by_seq.get(&(topic.to_owned(), seq)).cloned() {
                self.remove(&id);
            }
            self.done_seq(topic, seq);
            self.counts.overflowed += 1;
            dropped += 1;
        }
    }

    /// Messages waiting, as the delivery order has them (up to `limit`).
    pub fn peek(&self, limit: usize) -> Vec<&Entry> {
        self.pending.values().take(limit).collect()
    }

    /// GD messages waiting by the cursors (loaded or not) plus those in memory that the
    /// cursors do not count (non-GD, requeued dead letters).
    pub fn depth(&self) -> u64 {
        let log: u64 = self
            .topics
            .values()
            .map(|p| {
                ((p.last_known - p.acked_upto).max(0) as u64).saturating_sub(p.done.len() as u64)
            })
            .sum();
        let other = self
            .pending
            .values()
            .filter(|e| e.source != Source::Log)
            .count() as u64;
        log + other
    }

    /// Empties the queue: every topic's cursor to `last` (by topic), requeued dead letters
    /// deleted: how many messages were dropped.
    pub fn purge(&mut self, last: &HashMap<String, i64>) -> u64 {
        let mut n = 0;
        let ids: Vec<String> = self.by_id.keys().cloned().collect();
        for id in ids {
            if let Some(e) = self.remove(&id) {
                match e.source {
                    Source::Dead => {
                        self.dead_done.push(id);
                        n += 1;
                    }
                    Source::Memory => n += 1,
                    Source::Log => {}
                }
            }
        }
        for (topic, pos) in self.topics.iter_mut() {
            let end = last
                .get(topic)
                .copied()
                .unwrap_or(pos.last_known)
                .max(pos.acked_upto);
            n += ((end - pos.acked_upto).max(0) as u64).saturating_sub(pos.done.count_upto(end));
            pos.acked_upto = end;
            pos.loaded_upto = end;
            pos.last_known = pos.last_known.max(end);
            pos.done.retain_above(end);
            pos.attempts.retain(|s, _| *s > end);
            pos.behind = true;
        }
        self.dirty = true;
        n
    }
}

/// A duration in ms as an i64 (saturating: a u64 past i64::MAX would turn negative).
pub fn ms_i64(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// The wait before attempt `attempts + 1`: `backoff_ms × multiplier^(attempts-1)`, at most
/// `max_backoff_ms`.
pub fn backoff_ms(retry: &Retry, attempts: u32) -> u64 {
    let mut b = retry.backoff_ms;
    for _ in 1..attempts {
        b = b.saturating_mul(u64::from(retry.multiplier));
        if b >= retry.max_backoff_ms {
            return retry.max_backoff_ms;
        }
    }
    b.min(retry.max_backoff_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn msg(topic: &str, seq: i64, prio: u8, t: i64) -> Arc<Message> {
        Arc::new(Message {
            topic: topic.into(),
            seq,
            msg_id: format!("m{seq}"),
            pub_time_ms: t,
            expires_at_ms: None,
            priority: prio,
            has_gd: true,
            mime_type: "text/plain".into(),
            correl_id: None,
            in_reply_to: None,
            ext_client_id: None,
            published_by: "service:t".into(),
            data: Bytes::from(format!("d{seq}")),
        })
    }

    fn queue_at(topic: &str, acked: i64) -> Queue {
        let mut q = Queue::default();
        q.load_cursor(
            &CursorRow {
                topic: topic.into(),
                acked_upto: acked,
                state: "{}".into(),
            },
            acked,
        );
        // As after the first read of the log: caught up.
        q.topics.get_mut(topic).unwrap().behind = false;
        q
    }

    #[test]
    fn a_batch_stops_at_max_batch_bytes_but_has_one_message_at_least() {
        let mut q = Queue::default();
        let twelve = Bytes::from(vec![b'x'; 12 * 1024 * 1024]);
        let forty = Bytes::from(vec![b'y'; 40 * 1024 * 1024]);
        for (seq, data) in [(1, &forty), (2, &twelve), (3, &twelve), (4, &twelve)] {
            let mut m = Arc::unwrap_or_clone(msg("/t", seq, 5, seq));
            m.data = data.clone();
            q.add_memory(Arc::new(m), 100);
        }
        let sizes = |b: &[Entry]| b.iter().map(|e| e.msg.msg_id.clone()).collect::<Vec<_>>();
        // One message over the limit goes alone.
        assert_eq!(sizes(&q.take(10, 0, 1000, false)), ["m1"]);
        // 12 + 12 MiB fit in 32 MiB, a third does not.
        assert_eq!(sizes(&q.take(10, 0, 1000, false)), ["m2", "m3"]);
        assert_eq!(sizes(&q.take(10, 0, 1000, false)), ["m4"]);
    }

    #[test]
    fn priority_then_time_and_the_cursor_moves_over_contiguous_acks() {
        let mut q = queue_at("/t", 0);
        let ms = vec![
            msg("/t", 1, 5, 10),
            msg("/t", 2, 9, 11),
            msg("/t", 3, 5, 12),
        ];
        assert!(q.add_log("/t", &ms, 0, false));
        let got = q.take(10, 0, 1000, false);
        let ids: Vec<_> = got.iter().map(|e| e.msg.msg_id.as_str()).collect();
        assert_eq!(ids, ["m2", "m1", "m3"]);
        assert!(q.ack("m2", 0));
        assert!(
            !q.ack("m2", 0),
            "a second ack of the same message is no ack"
        );
        assert_eq!(q.topics["/t"].acked_upto, 0, "seq 1 is not done yet");
        assert!(q.ack("m1", 0));
        assert_eq!(q.topics["/t"].acked_upto, 2);
        let rows = q.cursor_rows();
        assert_eq!(rows[0].acked_upto, 2);
        assert_eq!(rows[0].state, "{}");
    }

    #[test]
    fn a_reset_offers_what_was_handed_out_again() {
        let mut q = queue_at("/t", 0);
        q.add_log("/t", &[msg("/t", 1, 5, 1)], 0, false);
        assert_eq!(q.take(1, 0, 1_000_000, false).len(), 1, "pulled");
        assert!(
            q.take(1, 10, 20, true).is_empty(),
            "an in-order delivery waits for the pulled message"
        );
        q.reset_in_flight();
        let again = q.take(1, 10, 20, true);
        assert_eq!(again[0].msg.seq, 1);
        assert_eq!(again[0].delivery_count, 2);
    }

    #[test]
    fn a_batch_stops_at_its_byte_cap_but_always_has_one() {
        let mut q = queue_at("/t", 0);
        let ms: Vec<_> = (1..=3).map(|s| msg("/t", s, 5, s)).collect();
        q.add_log("/t", &ms, 0, false);
        // Each message's data is 2 bytes ("d1", ...).
        assert_eq!(
            q.take_capped(10, 1, 0, 10, true).len(),
            1,
            "one past the cap"
        );
        q.reset_in_flight();
        assert_eq!(q.take_capped(10, 4, 0, 10, true).len(), 2);
        q.reset_in_flight();
        assert_eq!(q.take_capped(10, 5, 0, 10, true).len(), 2);
        q.reset_in_flight();
        assert_eq!(q.take_capped(10, 6, 0, 10, true).len(), 3);
    }

    #[test]
    fn done_is_kept_as_ranges() {
        let mut d = Ranges::default();
        for s in [5, 3, 4, 10, 12, 11, 1] {
            d.insert(s);
        }
        assert_eq!(d.ranges().collect::<Vec<_>>(), [(1, 1), (3, 5), (10, 12)]);
        assert_eq!(d.len(), 7);
        assert!(d.contains(&4) && !d.contains(&2) && !d.contains(&9));
        d.insert_range(2, 10);
        assert_eq!(d.ranges().collect::<Vec<_>>(), [(1, 12)]);
        assert!(d.remove(&1) && !d.remove(&1));
        assert!(d.remove(&6));
        assert_eq!(d.ranges().collect::<Vec<_>>(), [(2, 5), (7, 12)]);
        assert_eq!(d.count_upto(8), 6);
        d.retain_above(3);
        assert_eq!(d.ranges().collect::<Vec<_>>(), [(4, 5), (7, 12)]);
        assert_eq!(d.len(), 8);
        // One old message unacked, a million acked after it: the state stays small.
        let mut q = queue_at("/t", 0);
        let pos = q.topics.get_mut("/t").unwrap();
        pos.done.insert_range(2, 1_000_001);
        pos.last_known = 1_000_001;
        let rows = q.cursor_rows();
        assert!(rows[0].state.len() < 64, "{}", rows[0].state);
        let mut q2 = Queue::default();
        q2.load_cursor(&rows[0], 1_000_001);
        assert_eq!(q2.topics["/t"].done.len(), 1_000_000);
        assert_eq!(q2.depth(), 1);
        // A state written one seq at a time still reads.
        let old = CursorRow {
            topic: "/t".into(),
            acked_upto: 1,
            state: r#"{"done":[1,3,4]}"#.into(),
        };
        q2.load_cursor(&old, 5);
        assert_eq!(q2.topics["/t"].done.iter().collect::<Vec<_>>(), [3, 4]);
    }

    #[test]
    fn a_gap_makes_the_topic_behind() {
        let mut q = queue_at("/t", 0);
        assert!(q.add_log("/t", &[msg("/t", 1, 5, 1)], 0, false));
        assert!(!q.add_log("/t", &[msg("/t", 3, 5, 3)], 0, false));
        assert!(q.topics["/t"].behind);
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn failures_back_off_then_die() {
        let retry = Retry {
            max_attempts: 3,
            backoff_ms: 100,
            max_backoff_ms: 250,
            multiplier: 2,
        };
        assert_eq!(backoff_ms(&retry, 1), 100);
        assert_eq!(backoff_ms(&retry, 2), 200);
        assert_eq!(backoff_ms(&retry, 3), 250);
        let mut q = queue_at("/t", 0);
        q.add_log("/t", &[msg("/t", 1, 5, 1), msg("/t", 2, 5, 2)], 0, false);
        let b = q.take(1, 0, 10, true);
        assert_eq!(b[0].msg.seq, 1);
        q.failed("m1", "boom", &retry, 0);
        assert!(q.take(1, 50, 60, true).is_empty(), "in backoff, in order");
        assert_eq!(q.take(1, 100, 110, true)[0].msg.seq, 1);
        q.failed("m1", "boom", &retry, 100);
        assert_eq!(q.take(1, 300, 310, true)[0].msg.seq, 1);
        q.failed("m1", "boom 3", &retry, 300);
        assert_eq!(q.dying.len(), 1);
        assert_eq!(q.dying[0].reason, "boom 3");
        assert_eq!(
            q.topics["/t"].acked_upto, 0,
            "not past it before the dead letter is written"
        );
        let d = std::mem::take(&mut q.dying);
        q.dead_written(&d);
        assert_eq!(q.topics["/t"].acked_upto, 1);
        assert_eq!(q.take(1, 300, 310, true)[0].msg.seq, 2);
    }

    #[test]
    fn overflow_drops_the_oldest() {
        let mut q = queue_at("/t", 0);
        let ms: Vec<_> = (1..=5).map(|s| msg("/t", s, 5, s)).collect();
        q.add_log("/t", &ms, 0, false);
        assert_eq!(q.overflow("/t", 3), 2);
        assert_eq!(q.topics["/t"].acked_upto, 2);
        let ids: Vec<_> = q.peek(10).iter().map(|e| e.msg.seq).collect();
        assert_eq!(ids, [3, 4, 5]);
    }

    #[test]
    fn non_gd_depth_counts_only_queued_messages_and_the_list_stays_small() {
        let mut q = Queue::default();
        let non_gd = |seq: i64| {
            let mut m = (*msg("/n", seq, 5, seq)).clone();
            m.has_gd = false;
            m.seq = 0;
            Arc::new(m)
        };
        // 1..=3 queued, 1 and 2 acked: 4..=6 join without dropping anything (depth 3).
        for s in 1..=3 {
            q.add_memory(non_gd(s), 3);
        }
        q.take(2, 0, 10, false);
        assert!(q.ack("m1", 0) && q.ack("m2", 0));
        for s in 4..=5 {
            q.add_memory(non_gd(s), 3);
        }
        assert_eq!(q.counts.overflowed, 0);
        // A fourth queued one drops the oldest still queued (3), not an acked one.
        q.add_memory(non_gd(6), 3);
        assert_eq!(q.counts.overflowed, 1);
        let ids: Vec<_> = q.peek(10).iter().map(|e| e.msg.msg_id.clone()).collect();
        assert_eq!(ids, ["m4", "m5", "m6"]);
        // Many acked while old messages stay (in flight): the list is compacted as it goes.
        assert_eq!(q.take(3, 0, 10, false).len(), 3);
        for s in 7..=5_000 {
            q.add_memory(non_gd(s), 10_000);
            q.take(1, 0, 10, false);
            let id = format!("m{s}");
            assert!(q.ack(&id, 0), "{id}");
        }
        let list = &q.memory_by_topic["/n"];
        assert_eq!(list.live, 3);
        assert!(list.ids.len() <= 2 * list.live + 64, "{}", list.ids.len());
        assert_eq!(q.counts.overflowed, 1);
    }

    #[test]
    fn due_times_follow_deadlines_and_backoffs() {
        let mut q = queue_at("/t", 0);
        let retry = Retry::default();
        q.add_log("/t", &[msg("/t", 1, 5, 1), msg("/t", 2, 5, 2)], 0, false);
        assert_eq!(
            q.next_due(0),
            None,
            "nothing in flight, nothing backing off"
        );
        q.take(1, 0, 500, false);
        assert_eq!(q.next_due(100), Some(500));
        assert_eq!(q.ack_timeouts(&retry, 499), 0);
        q.take(1, 0, 300, false);
        assert_eq!(q.next_due(100), Some(300), "a nearer deadline is seen");
        assert_eq!(q.ack_timeouts(&retry, 300), 1, "m2's deadline passed");
        assert_eq!(q.next_due(301), Some(500));
        assert!(q.ack("m1", 301));
        // m1's deadline is gone: an early answer is allowed, then the exact one.
        let first = q.next_due(501);
        assert!(first.is_none() || first == Some(500));
        assert_eq!(q.ack_timeouts(&retry, 10_000), 0);
        assert_eq!(q.next_due(10_000), None);
        // A failed delivery is due again after its backoff.
        q.take(1, 10_000, 20_000, false);
        q.failed("m2", "x", &retry, 10_000);
        let due = q.next_due(10_000).expect("backing off");
        assert!(due > 10_000 && due <= 10_000 + 3_600_000, "{due}");
    }

    #[test]
    fn expired_messages_are_skipped_and_counted() {
        let mut q = queue_at("/t", 0);
        let mut m = (*msg("/t", 1, 5, 1)).clone();
        m.expires_at_ms = Some(50);
        q.add_log("/t", &[Arc::new(m), msg("/t", 2, 5, 2)], 0, false);
        let got = q.take(10, 100, 200, true);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].msg.seq, 2);
        assert_eq!(q.counts.expired, 1);
        assert_eq!(q.topics["/t"].acked_upto, 1);
    }

    #[test]
    fn state_survives_a_reload() {
        let mut q = queue_at("/t", 0);
        let retry = Retry::default();
        q.add_log("/t", &[msg("/t", 1, 5, 1), msg("/t", 2, 5, 2)], 0, false);
        q.take(10, 0, 10, false);
        q.ack("m2", 0);
        q.failed("m1", "x", &retry, 0);
        let rows = q.cursor_rows();
        let mut q2 = Queue::default();
        q2.load_cursor(&rows[0], 2);
        q2.topics.get_mut("/t").unwrap().behind = false;
        assert_eq!(q2.topics["/t"].done.iter().collect::<Vec<_>>(), [2]);
        q2.add_log("/t", &[msg("/t", 1, 5, 1), msg("/t", 2, 5, 2)], 0, false);
        let got = q2.take(10, 10_000, 20_000, false);
        assert_eq!(got.len(), 1, "the acked one is not redelivered");
        assert_eq!(got[0].attempts, 1, "attempts carry over");
    }
}
