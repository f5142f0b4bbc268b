//! Pub/sub delivery's tables: each subscription's place in its topics' logs
//! (`pubsub_cursor`), who delivers it (`pubsub_lease`), its dead letters (`pubsub_dead`),
//! and the reads of a topic's log a delivery task needs (a backlog after its cursor). SQL
//! only: what the cursors mean, who should hold which lease and when a message is dead are
//! the broker's (`pubsub/deliver`).

use bytes::Bytes;
use sqlx::Row;
use std::time::Duration;

use super::objects::upsert_object;
use super::{Change, Result, Store, StoreError, bump};
use crate::model::object::ConfigObject;
use crate::model::pubsub::{Message, Subscription};
use crate::store::BeginWrite;

/// Where a new cursor starts in its topic's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CursorStart {
    /// After the last message appended: only what is published from now on.
    End,
    /// Before the oldest message kept that has not expired (a topic's first subscription
    /// gets what `on_no_subs: keep` kept); at the end when none is kept.
    OldestKept { now_ms: i64 },
    /// Before the first message published at or after this time (Unix ms): a topic made
    /// after a pattern subscription that matches it; at the end when there is none.
    Since(i64),
}

/// A subscription's stored place in one topic's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorRow {
    pub topic: String,
    /// Every message of the topic with seq <= this is done with.
    pub acked_upto: i64,
    /// JSON of what is done above `acked_upto` and the attempts of failing messages.
    pub state: String,
}

/// A dead letter as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadRow {
    pub msg: Message,
    pub attempts: u32,
    pub reason: String,
    pub dead_at: i64,
    /// Back in the subscription's queue until acked.
    pub requeued: bool,
}

/// The columns of a message, in `msg_from_row`'s order.
const MSG_COLS: &str = "topic, seq, msg_id, pub_time, expires_at, priority, mime_type, \
                        correl_id, in_reply_to, ext_client_id, published_by, data";

fn msg_from_row<R: Row>(r: &R) -> std::result::Result<Message, sqlx::Error>
where
    usize: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i16: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Vec<u8>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let seq: i64 = r.try_get(1)?;
    let priority: i16 = r.try_get(5)?;
    Ok(Message {
        topic: r.try_get(0)?,
        seq,
        msg_id: r.try_get(2)?,
        pub_time_ms: r.try_get(3)?,
        expires_at_ms: r.try_get(4)?,
        priority: priority.clamp(1, 9) as u8,
        // Only GD messages are stored; a dead letter of a non-GD message has seq 0.
        has_gd: seq > 0,
        mime_type: r.try_get(6)?,
        correl_id: r.try_get(7)?,
        in_reply_to: r.try_get(8)?,
        ext_client_id: r.try_get(9)?,
        published_by: r.try_get(10)?,
        data: Bytes::from(r.try_get::<Vec<u8>, _>(11)?),
    })
}

/// Inside transaction `$tx`: creates `$sub_key`'s cursor over `$topic` starting at
/// `$start` unless it has one; evaluates to a `Result` of its `acked_upto`.
macro_rules! insert_cursor {
    ($tx:ident, $sub_key:expr, $topic:expr, $start:expr, $now_ms:expr) => {{
        let sub_key: &str = $sub_key;
        let topic: &str = $topic;
        let existing: Option<i64> = sqlx::query_scalar(
            "SELECT acked_upto FROM pubsub_cursor WHERE sub_key = $1 AND topic = $2",
        )
        .bind(sub_key)
        .bind(topic)
        .fetch_optional(&mut *$tx)
        .await?;
        match existing {
            // A cursor that exists stays where it is.
            Some(v) => Ok::<i64, StoreError>(v),
            None => {
                let last: Option<i64> =
                    sqlx::query_scalar("SELECT last_seq FROM pubsub_topic_seq WHERE topic = $1")
                        .bind(topic)
                        .fetch_optional(&mut *$tx)
                        .await?;
                let last = last.unwrap_or(0);
                let first: Option<i64> =
                    match $start {
                        CursorStart::End => None,
                        CursorStart::OldestKept { now_ms } => {
                            sqlx::query_scalar(
                                "SELECT MIN(seq) FROM pubsub_msg WHERE topic = $1 \
                         AND (expires_at IS NULL OR expires_at > $2)",
                            )
                            .bind(topic)
                            .bind(now_ms)
                            .fetch_one(&mut *$tx)
                            .await?
                        }
                        CursorStart::Since(ms) => sqlx::query_scalar(
                            "SELECT MIN(seq) FROM pubsub_msg WHERE topic = $1 AND pub_time >= $2",
                        )
                        .bind(topic)
                        .bind(ms)
                        .fetch_one(&mut *$tx)
                        .await?,
                    };
                let acked_upto = first.map_or(last, |f| (f - 1).min(last));
                sqlx::query(
                    "INSERT INTO pubsub_cursor (sub_key, topic, acked_upto, state, updated_at) \
                     VALUES ($1, $2, $3, '{}', $4)",
                )
                .bind(sub_key)
                .bind(topic)
                .bind(acked_upto)
                .bind($now_ms)
                .execute(&mut *$tx)
                .await?;
                Ok(acked_upto)
            }
        }
    }};
}

impl Store {
    /// The last seq appended to `topic`'s log (0 before the first).
    pub async fn sub_last_seq(&self, topic: &str) -> Result<i64> {
        let v: Option<i64> = on_pool!(self, p => sqlx::query_scalar(
            "SELECT last_seq FROM pubsub_topic_seq WHERE topic = $1",
        )
        .bind(topic)
        .fetch_optional(p)
        .await?);
        Ok(v.unwrap_or(0))
    }

    /// Creates `sub_key`'s cursor over `topic` unless it has one; its `acked_upto` now.
    /// Refused (not found) when the subscription's definition is not stored: a delivery task
    /// that runs on after an unsubscribe must not leave a cursor behind it.
    pub async fn sub_cursor_create(
        &self,
        sub_key: &str,
        topic: &str,
        start: CursorStart,
        now_ms: i64,
    ) -> Result<i64> {
        on_pool!(self, p => {
            let mut tx = p.begin_write().await?;
            let exists: Option<String> =
                sqlx::query_scalar("SELECT name FROM pubsub_subs WHERE name = $1")
                    .bind(sub_key)
                    .fetch_optional(&mut *tx)
                    .await?;
            if exists.is_none() {
                return Err(StoreError::NotFound(format!("no subscription named {sub_key}")));
            }
            let v = insert_cursor!(tx, sub_key, topic, start, now_ms);
            tx.commit().await?;
            v
        })
    }

    /// Creates subscription `sub` (refused when one of its sub_key is stored) and its
    /// cursors over `topics` in one transaction, so that neither is ever stored without the
    /// other. Each cursor starts at the end of its topic's log, or, for a topic given with
    /// `keep` (`on_no_subs: keep`) that no other subscription has a cursor over, before the
    /// oldest message kept for it.
    pub async fn sub_create(
        &self,
        sub: &Subscription,
        by: &str,
        topics: &[(String, bool)],
        now_ms: i64,
    ) -> Result<Change<Subscription>> {
        sub.validate()
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        let sub_key = sub.sub_key.as_str();
        let def = sub.clone().into_stored(None, chrono::Utc::now());
        on_pool!(self, p => {
            let mut tx = p.begin_write().await?;
            // The version first: its row lock orders this change after any other one still
            // open, so the check below sees every subscription committed before it.
            let config_version = bump(&mut tx).await?;
            let exists: Option<String> =
                sqlx::query_scalar("SELECT name FROM pubsub_subs WHERE name = $1")
                    .bind(sub_key)
                    .fetch_optional(&mut *tx)
                    .await?;
            if exists.is_some() {
                return Err(StoreError::Invalid(format!(
                    "a subscription named {sub_key} exists already"
                )));
            }
            // Rows a subscription of this sub_key left (made before deletes were one
            // transaction) are not this one's.
            for sql in [
                "DELETE FROM pubsub_cursor WHERE sub_key = $1",
                "DELETE FROM pubsub_lease WHERE sub_key = $1",
                "DELETE FROM pubsub_dead WHERE sub_key = $1",
            ] {
                sqlx::query(sql).bind(sub_key).execute(&mut *tx).await?;
            }
            upsert_object!(tx, Subscription, &def, by);
            for (topic, keep) in topics {
                let start = if *keep {
                    let others: i64 = sqlx::query_scalar(
                        "SELECT COUNT(*) FROM pubsub_cursor WHERE topic = $1 AND sub_key <> $2",
                    )
                    .bind(topic)
                    .bind(sub_key)
                    .fetch_one(&mut *tx)
                    .await?;
                    if others == 0 { CursorStart::OldestKept { now_ms } } else { CursorStart::End }
                } else {
                    CursorStart::End
                };
                insert_cursor!(tx, sub_key, topic.as_str(), start, now_ms)?;
            }
            tx.commit().await?;
            Ok(Change { config_version, value: def })
        })
    }

    /// Deletes subscription `sub_key` and everything delivery keeps of it (cursors, lease,
    /// dead letters) in one transaction; not found when it is not stored.
    pub async fn sub_delete(&self, sub_key: &str) -> Result<Change<()>> {
        on_pool!(self, p => {
            let mut tx = p.begin_write().await?;
            let n = sqlx::query("DELETE FROM pubsub_subs WHERE name = $1")
                .bind(sub_key)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound(format!("no subscription named {sub_key}")));
            }
            for sql in [
                "DELETE FROM pubsub_cursor WHERE sub_key = $1",
                "DELETE FROM pubsub_lease WHERE sub_key = $1",
                "DELETE FROM pubsub_dead WHERE sub_key = $1",
            ] {
                sqlx::query(sql).bind(sub_key).execute(&mut *tx).await?;
            }
            let config_version = bump(&mut tx).await?;
            tx.commit().await?;
            Ok(Change { config_version, value: () })
        })
    }

    /// Whether any subscription other than `sub_key` has a cursor over `topic`.
    pub async fn sub_topic_has_other_cursor(&self, topic: &str, sub_key: &str) -> Result<bool> {
        let n: i64 = on_pool!(self, p => sqlx::query_scalar(
            "SELECT COUNT(*) FROM pubsub_cursor WHERE topic = $1 AND sub_key <> $2",
        )
        .bind(topic)
        .bind(sub_key)
        .fetch_one(p)
        .await?);
        Ok(n > 0)
    }

    /// `sub_key`'s cursors, by topic.
    pub async fn sub_cursors(&self, sub_key: &str) -> Result<Vec<CursorRow>> {
        on_pool!(self, p => {
            let rows = sqlx::query(
                "SELECT topic, acked_upto, state FROM pubsub_cursor WHERE sub_key = $1 \
                 ORDER BY topic",
            )
            .bind(sub_key)
            .fetch_all(p)
            .await?;
            rows.iter()
                .map(|r| -> Result<CursorRow> {
                    Ok(CursorRow {
                        topic: r.try_get(0)?,
                        acked_upto: r.try_get(1)?,
                        state: r.try_get(2)?,
                    })
                })
                .collect::<Result<Vec<_>>>()
        })
    }

    /// Writes `sub_key`'s cursors in one transaction, only while `holder` holds its lease,
    /// unexpired at `now_ms` (a server that lost the lease, or whose lease ran out while it
    /// could not renew it, must not move the new owner's place): false when it does not,
    /// and nothing was written.
    pub async fn sub_cursors_save(
        &self,
        sub_key: &str,
        holder: &str,
        rows: &[CursorRow],
        now_ms: i64,
    ) -> Result<bool> {
        // The lease row is locked until the commit (PostgreSQL: FOR UPDATE; SQLite: the
        // write transaction holds the database), so it cannot expire into another server's
        // hands between this check and the writes.
        let sql = if matches!(self, Store::Postgres(_)) {
            "SELECT holder FROM pubsub_lease WHERE sub_key = $1 AND holder = $2 \
             AND expires_at >= $3 FOR UPDATE"
        } else {
            "SELECT holder FROM pubsub_lease WHERE sub_key = $1 AND holder = $2 \
             AND expires_at >= $3"
        };
        on_pool!(self, p => {
            let mut tx = p.begin_write().await?;
            let held: Option<String> = sqlx::query_scalar(sql)
                .bind(sub_key)
                .bind(holder)
                .bind(now_ms)
                .fetch_optional(&mut *tx)
                .await?;
            if held.is_none() {
                return Ok(Ok(false));
            }
            for c in rows {
                sqlx::query(
                    "UPDATE pubsub_cursor SET acked_upto = $3, state = $4, updated_at = $5 \
                     WHERE sub_key = $1 AND topic = $2",
                )
                .bind(sub_key)
                .bind(&c.topic)
                .bind(c.acked_upto)
                .bind(&c.state)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(true)
        })
    }

    /// Deletes everything delivery keeps of `sub_key`: its cursors, lease and dead letters.
    pub async fn sub_forget(&self, sub_key: &str) -> Result<()> {
        on_pool!(self, p => {
            let mut tx = p.begin_write().await?;
            for sql in [
                "DELETE FROM pubsub_cursor WHERE sub_key = $1",
                "DELETE FROM pubsub_lease WHERE sub_key = $1",
                "DELETE FROM pubsub_dead WHERE sub_key = $1",
            ] {
                sqlx::query(sql).bind(sub_key).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Up to `limit` messages of `topic` with seq > `after`, in seq order.
    pub async fn sub_backlog(&self, topic: &str, after: i64, limit: u32) -> Result<Vec<Message>> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {MSG_COLS} FROM pubsub_msg WHERE topic = $1 AND seq > $2 \
             ORDER BY seq LIMIT $3"
        ));
        on_pool!(self, p => {
            let rows = sqlx::query(sql)
                .bind(topic)
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(p)
                .await?;
            rows.iter()
                .map(|r| msg_from_row(r).map_err(super::StoreError::from))
                .collect::<Result<Vec<_>>>()
        })
    }

    /// Takes or renews `sub_key`'s delivery lease for `me`: true when `me` holds it until
    /// `now + ttl` (it was free, expired or already `me`'s).
    pub async fn sub_lease_take(
        &self,
        sub_key: &str,
        me: &str,
        now: i64,
        ttl: Duration,
    ) -> Result<bool> {
        let until = now + ttl.as_millis() as i64;
        let n = on_pool!(self, p => sqlx::query(
            "INSERT INTO pubsub_lease (sub_key, holder, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (sub_key) DO UPDATE SET holder = excluded.holder, \
             expires_at = excluded.expires_at \
             WHERE pubsub_lease.holder = excluded.holder OR pubsub_lease.expires_at < $4",
        )
        .bind(sub_key)
        .bind(me)
        .bind(until)
        .bind(now)
        .execute(p)
        .await?
        .rows_affected());
        Ok(n == 1)
    }

    /// Renews, in one statement per few hundred, the leases of `sub_keys` that `me` holds
    /// (until `now + ttl`): the sub_keys renewed. One missing from the answer is no longer
    /// `me`'s (taken over after it expired, or gone with its subscription).
    pub async fn sub_leases_renew(
        &self,
        me: &str,
        sub_keys: &[String],
        now: i64,
        ttl: Duration,
    ) -> Result<Vec<String>> {
        let until = now + ttl.as_millis() as i64;
        let mut renewed = Vec::with_capacity(sub_keys.len());
        for chunk in sub_keys.chunks(500) {
            let marks: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 3)).collect();
            // Only placeholders are formatted in; the keys are bound.
            let sql = sqlx::AssertSqlSafe(format!(
                "UPDATE pubsub_lease SET expires_at = $2 WHERE holder = $1 \
                 AND sub_key IN ({}) RETURNING sub_key",
                marks.join(", ")
            ));
            let got: Vec<String> = on_pool!(self, p => {
                let mut q = sqlx::query_scalar(sql).bind(me).bind(until);
                for k in chunk {
                    q = q.bind(k);
                }
                q.fetch_all(p).await?
            });
            renewed.extend(got);
        }
        Ok(renewed)
    }

    /// Hands `sub_key`'s lease back if `me` holds it (a clean stop, a subscription gone).
    pub async fn sub_lease_release(&self, sub_key: &str, me: &str) -> Result<()> {
        on_pool!(self, p => sqlx::query("DELETE FROM pubsub_lease WHERE sub_key = $1 AND holder = $2")
            .bind(sub_key)
            .bind(me)
            .execute(p)
            .await
            .map(drop)?);
        Ok(())
    }

    /// Every delivery lease: (sub_key, holder, expires_at Unix ms); the rotation's
    /// (`#…` keys) left out.
    pub async fn sub_leases(&self) -> Result<Vec<(String, String, i64)>> {
        on_pool!(self, p => {
            let rows = sqlx::query(
                "SELECT sub_key, holder, expires_at FROM pubsub_lease \
                 WHERE sub_key NOT LIKE '#%' ORDER BY sub_key",
            )
            .fetch_all(p)
            .await?;
            rows.iter()
                .map(|r| -> Result<(String, String, i64)> {
                    Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))
                })
                .collect::<Result<Vec<_>>>()
        })
    }

    /// Stores a dead letter of `sub_key` (replacing one of the same msg_id: a requeued
    /// message that died again); nothing once the subscription is deleted (its task may
    /// still be stopping).
    pub async fn sub_dead_put(
        &self,
        sub_key: &str,
        msg: &Message,
        attempts: u32,
        reason: &str,
        now_ms: i64,
    ) -> Result<()> {
        on_pool!(self, p => sqlx::query(
            "INSERT INTO pubsub_dead (sub_key, msg_id, topic, seq, pub_time, expires_at, \
             priority, mime_type, correl_id, in_reply_to, ext_client_id, published_by, data, \
             attempts, reason, dead_at, requeued) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, 0 \
             WHERE EXISTS (SELECT 1 FROM pubsub_subs WHERE name = $1) \
             ON CONFLICT (sub_key, msg_id) DO UPDATE SET attempts = excluded.attempts, \
             reason = excluded.reason, dead_at = excluded.dead_at, requeued = 0",
        )
        .bind(sub_key)
        .bind(&msg.msg_id)
        .bind(&msg.topic)
        .bind(msg.seq)
        .bind(msg.pub_time_ms)
        .bind(msg.expires_at_ms)
        .bind(i16::from(msg.priority))
        .bind(&msg.mime_type)
        .bind(&msg.correl_id)
        .bind(&msg.in_reply_to)
        .bind(&msg.ext_client_id)
        .bind(&msg.published_by)
        .bind(msg.data.as_ref())
        .bind(attempts.min(i32::MAX as u32) as i32)
        .bind(reason)
        .bind(now_ms)
        .execute(p)
        .await
        .map(drop)?);
        Ok(())
    }

    /// Up to `limit` of `sub_key`'s dead letters, oldest first; `requeued`: only those
    /// (not) requeued, none: all.
    pub async fn sub_dead(
        &self,
        sub_key: &str,
        requeued: Option<bool>,
        limit: u32,
    ) -> Result<Vec<DeadRow>> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {MSG_COLS}, attempts, reason, dead_at, requeued FROM pubsub_dead \
             WHERE sub_key = $1 AND ($2 < 0 OR requeued = $2) \
             ORDER BY dead_at, msg_id LIMIT $3"
        ));
        let flag: i16 = requeued.map_or(-1, i16::from);
        on_pool!(self, p => {
            let rows = sqlx::query(sql)
                .bind(sub_key)
                .bind(flag)
                .bind(i64::from(limit))
                .fetch_all(p)
                .await?;
            rows.iter()
                .map(|r| -> Result<DeadRow> {
                    Ok(DeadRow {
                        msg: msg_from_row(r)?,
                        attempts: r.try_get::<i32, _>(12)?.max(0) as u32,
                        reason: r.try_get(13)?,
                        dead_at: r.try_get(14)?,
                        requeued: r.try_get::<i16, _>(15)? != 0,
                    })
                })
                .collect::<Result<Vec<_>>>()
        })
    }

    /// How many dead letters `sub_key` has (requeued ones included).
    pub async fn sub_dead_count(&self, sub_key: &str) -> Result<u64> {
        let n: i64 = on_pool!(self, p => sqlx::query_scalar(
            "SELECT COUNT(*) FROM pubsub_dead WHERE sub_key = $1",
        )
        .bind(sub_key)
        .fetch_one(p)
        .await?);
        Ok(n.max(0) as u64)
    }

    /// Marks dead letters of `sub_key` requeued (these msg_ids; none: all not yet
    /// requeued), their attempts from 0: how many.
    pub async fn sub_dead_requeue(&self, sub_key: &str, msg_ids: Option<&[String]>) -> Result<u64> {
        on_pool!(self, p => {
            let mut tx = p.begin_write().await?;
            let mut n = 0;
            match msg_ids {
                None => {
                    n += sqlx::query(
                        "UPDATE pubsub_dead SET requeued = 1, attempts = 0 \
                         WHERE sub_key = $1 AND requeued = 0",
                    )
                    .bind(sub_key)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                }
                Some(ids) => {
                    for id in ids {
                        n += sqlx::query(
                            "UPDATE pubsub_dead SET requeued = 1, attempts = 0 \
                             WHERE sub_key = $1 AND msg_id = $2 AND requeued = 0",
                        )
                        .bind(sub_key)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    }
                }
            }
            tx.commit().await?;
            Ok(n)
        })
    }

    /// Deletes one of `sub_key`'s dead letters (a requeued one that was delivered).
    pub async fn sub_dead_delete(&self, sub_key: &str, msg_id: &str) -> Result<()> {
        on_pool!(self, p => sqlx::query("DELETE FROM pubsub_dead WHERE sub_key = $1 AND msg_id = $2")
            .bind(sub_key)
            .bind(msg_id)
            .execute(p)
            .await
            .map(drop)?);
        Ok(())
    }

    /// Appends `msgs` to their topic's log, numbering them from the topic's last seq (their
    /// `seq` is ignored): their seqs. The publish path has its own flusher
    /// (`store/pubsub_log.rs`); this one, one message per statement, serves tests and tools
    /// that need a log without a broker.
    #[doc(hidden)]
    pub async fn sub_append_for_tests(&self, topic: &str, msgs: &[Message]) -> Result<Vec<i64>> {
        let sql = sqlx::AssertSqlSafe(format!(
            "INSERT INTO pubsub_msg (part, {MSG_COLS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
        ));
        on_pool!(self, p => {
            let mut tx = p.begin_write().await?;
            let n = msgs.len() as i64;
            sqlx::query(
                "INSERT INTO pubsub_topic_seq (topic, last_seq) VALUES ($1, 0) \
                 ON CONFLICT (topic) DO NOTHING",
            )
            .bind(topic)
            .execute(&mut *tx)
            .await?;
            let last: i64 = sqlx::query_scalar(
                "UPDATE pubsub_topic_seq SET last_seq = last_seq + $2 WHERE topic = $1 \
                 RETURNING last_seq",
            )
            .bind(topic)
            .bind(n)
            .fetch_one(&mut *tx)
            .await?;
            let part: i16 = sqlx::query_scalar("SELECT current FROM pubsub_parts WHERE id = 1")
                .fetch_one(&mut *tx)
                .await?;
            let mut seqs = Vec::with_capacity(msgs.len());
            for (i, m) in msgs.iter().enumerate() {
                let seq = last - n + 1 + i as i64;
                sqlx::query(sqlx::AssertSqlSafe(sql.0.clone()))
                    .bind(part)
                    .bind(topic)
                    .bind(seq)
                    .bind(&m.msg_id)
                    .bind(m.pub_time_ms)
                    .bind(m.expires_at_ms)
                    .bind(i16::from(m.priority))
                    .bind(&m.mime_type)
                    .bind(&m.correl_id)
                    .bind(&m.in_reply_to)
                    .bind(&m.ext_client_id)
                    .bind(&m.published_by)
                    .bind(m.data.as_ref())
                    .execute(&mut *tx)
                    .await?;
                seqs.push(seq);
            }
            tx.commit().await?;
            Ok(seqs)
        })
    }
}
