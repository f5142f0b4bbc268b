//! The pub/sub message log (`pubsub_topic_seq`, `pubsub_msg`, `pubsub_parts`; docs/PUBSUB.md
//! "Storage"): appending a flush of GD messages in one transaction, reading a topic's log
//! by seq, the figures of the partitions, and their rotation (the lease `#rotate` in
//! `pubsub_lease`). SQL only: when to flush and when to rotate are `pubsub/`'s.
//!
//! PostgreSQL keeps the log in four list partitions of `pubsub_msg` (`part` 0-3): publishes
//! write to `pubsub_parts.current`; a rotation moves the current one on and empties the
//! oldest with `TRUNCATE` after moving its still-live rows into the current one, so that
//! rows never leave by `DELETE` (no bloat, no vacuum debt). SQLite has one table whose
//! `part` column plays the same role; there the rotation deletes the oldest generation's
//! dead rows and leaves its live ones where they are (a file has no bloat to fear, only its
//! free pages, which it reuses).

use sqlx::Row;
use std::collections::HashMap;
use std::time::Duration;

use super::{BeginWrite, Result, Store, StoreError};
use crate::model::pubsub::Message;

/// The partitions of the log (`pubsub_msg_0` … `pubsub_msg_3`).
pub const LOG_PARTS: i16 = 4;

/// The rows one multi-row `INSERT` carries on SQLite (13 binds each, under its 32,766).
const SQLITE_ROWS_PER_INSERT: usize = 500;

/// Rows one SQLite rotation step deletes or moves per transaction, so that publishes
/// waiting on the file's single write lock wait for one step, not the whole rotation.
const SQLITE_ROWS_PER_STEP: i64 = 10_000;

/// One topic's part of a flush: the publishes (groups) that append to it, in the order
/// they were queued. A group is one publish call's messages for the topic: all of them are
/// appended, or (depth) none.
#[derive(Debug)]
pub struct TopicAppend {
    pub topic: String,
    /// `Some(max_depth_gd)` for a topic with `on_full: refuse`: a group that would take the
    /// topic's depth past it is refused whole. None: no check (`overflow`: the delivery
    /// drops instead).
    pub refuse_past: Option<u64>,
    /// The topic's floor (the seq below which every message is done with: its slowest
    /// cursor, or before its oldest kept message) as the caller last saw it. A floor only
    /// rises (cursors move forward, messages expire), so an old one overstates the depth:
    /// when even that leaves room for every group, the floor is not read again. Set by
    /// [`Store::append_log`] whenever it reads the floor.
    pub known_floor: Option<i64>,
    /// Their `seq` is set by [`Store::append_log`] when the group is appended.
    pub groups: Vec<Vec<Message>>,
    /// The topic's `on_no_subs` is `drop` and the caller's definitions show no
    /// subscription: drop the groups (accepted, not stored) unless some subscription has a
    /// cursor on the topic, as one just made on another server has (decided in the flush's
    /// transaction, after the seq row is locked).
    pub drop_unsubscribed: bool,
    /// Set by [`Store::append_log`]: the groups were accepted and dropped, not stored.
    pub dropped: bool,
}

/// A failed [`Store::append_log`].
#[derive(Debug)]
pub struct AppendError {
    pub error: StoreError,
    /// The failure came at or after COMMIT: the flush may have been stored (and its
    /// messages may be delivered). False: nothing of it was stored.
    pub unknown_outcome: bool,
}

impl std::fmt::Display for AppendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.unknown_outcome {
            write!(f, "{} (at COMMIT: the outcome is unknown)", self.error)
        } else {
            write!(f, "{}", self.error)
        }
    }
}

/// A partition's figures.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PartFigures {
    pub part: i16,
    pub rows: i64,
    /// PostgreSQL: the partition's size on disk with its index and TOAST
    /// (`pg_total_relation_size`). SQLite: the bytes of its rows' values (the file's pages
    /// are shared by every table: `LogFigures::file_bytes`).
    pub bytes: i64,
}

/// The log's storage figures.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LogFigures {
    /// The partition publishes write to.
    pub current: i16,
    /// When it became current (Unix ms; 0: never rotated).
    pub rotated_at_ms: i64,
    pub parts: Vec<PartFigures>,
    /// SQLite: the whole database file (page_count × page_size); PostgreSQL: none.
    pub file_bytes: Option<i64>,
}

/// What one cleaning of a partition did ([`Store::clean_log_part`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CleanFigures {
    pub part: i16,
    /// Live rows moved into the current partition (PostgreSQL; SQLite leaves them).
    pub moved: u64,
    /// Dead rows removed (truncated on PostgreSQL, deleted on SQLite).
    pub removed: u64,
    /// The partition's bytes before (PostgreSQL: on disk; SQLite: its rows' values).
    pub bytes_before: i64,
}

/// What one garbage collection removed ([`Store::log_gc`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct GcFigures {
    pub dead_letters: u64,
    pub cursors: u64,
    pub leases: u64,
}

impl GcFigures {
    pub fn is_empty(&self) -> bool {
        *self == GcFigures::default()
    }
}

/// The columns of `pubsub_msg` a message is read with, in [`message_of`]'s order.
const COLUMNS: &str = "topic, seq, msg_id, pub_time, expires_at, priority, mime_type, \
                       correl_id, in_reply_to, ext_client_id, published_by, data";

/// A row is live (kept by rotation) when it has not expired, its topic is defined
/// (`pubsub_topics` row) and either no subscription has a cursor on the topic yet
/// (kept for its first subscription) or some cursor has not passed it. A cursor whose
/// subscription is gone (no `pubsub_subs` row: an orphan until the garbage collection
/// takes it) counts for nothing, or it would hold the topic's floor forever. `$1`: now.
const LIVE: &str = "(m.expires_at IS NULL OR m.expires_at > $1) \
     AND EXISTS (SELECT 1 FROM pubsub_topics t WHERE t.name = m.topic) \
     AND m.seq > COALESCE((SELECT min(c.acked_upto) FROM pubsub_cursor c \
                           WHERE c.topic = m.topic AND EXISTS \
                           (SELECT 1 FROM pubsub_subs u WHERE u.name = c.sub_key)), 0)";

/// The cursors of live subscriptions (orphans left by a deleted subscription ignored).
const LIVE_CURSOR: &str = "EXISTS (SELECT 1 FROM pubsub_subs u WHERE u.name = c.sub_key)";

fn message_of<R>(r: &R) -> std::result::Result<Message, sqlx::Error>
where
    R: Row,
    usize: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i16: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Vec<u8>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let priority: i16 = r.try_get(5)?;
    Ok(Message {
        topic: r.try_get(0)?,
        seq: r.try_get(1)?,
        msg_id: r.try_get(2)?,
        pub_time_ms: r.try_get(3)?,
        expires_at_ms: r.try_get(4)?,
        priority: priority.clamp(0, 255) as u8,
        // Only GD messages are stored.
        has_gd: true,
        mime_type: r.try_get(6)?,
        correl_id: r.try_get(7)?,
        in_reply_to: r.try_get(8)?,
        ext_client_id: r.try_get(9)?,
        published_by: r.try_get(10)?,
        data: bytes::Bytes::from(r.try_get::<Vec<u8>, _>(11)?),
    })
}

/// The floor of a topic in the transaction `tx` holding its seq row: the lowest
/// `acked_upto` of its live subscriptions' cursors ([`LIVE_CURSOR`]), or, with no cursor, the seq before its oldest kept
/// (unexpired) message, or `$last` when none is kept. Its depth is `$last - floor`.
macro_rules! floor_in_tx {
    ($tx:expr, $topic:expr, $last:expr, $now:expr) => {{
        let min: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT min(c.acked_upto) FROM pubsub_cursor c WHERE c.topic = $1 AND {LIVE_CURSOR}"
        )))
        .bind($topic)
        .fetch_one(&mut *$tx)
        .await?;
        match min {
            Some(m) => m,
            None => {
                let oldest: Option<i64> = sqlx::query_scalar(
                    "SELECT min(seq) FROM pubsub_msg WHERE topic = $1 \
                     AND (expires_at IS NULL OR expires_at > $2)",
                )
                .bind($topic)
                .bind($now)
                .fetch_one(&mut *$tx)
                .await?;
                oldest.map_or($last, |o| o - 1)
            }
        }
    }};
}

/// Per topic (sorted by name, so that two flushers lock the seq rows in one order and
/// never deadlock): locks its seq row, decides which groups fit, numbers them and moves
/// the row on. `$tx` is open; the messages' seqs are set. Evaluates to the accepted flags.
macro_rules! number_groups {
    ($tx:expr, $appends:expr, $now:expr) => {{
        let mut accepted: Vec<Vec<bool>> = vec![Vec::new(); $appends.len()];
        let mut order: Vec<usize> = (0..$appends.len()).collect();
        order.sort_by(|a, b| $appends[*a].topic.cmp(&$appends[*b].topic));
        for i in order {
            let a: &mut TopicAppend = &mut $appends[i];
            // The upsert locks the row (created at 0 on the topic's first GD message) until
            // COMMIT: a later flush of the topic waits here, so its seqs follow ours and
            // commit after ours.
            let last: i64 = sqlx::query_scalar(
                "INSERT INTO pubsub_topic_seq (topic, last_seq) VALUES ($1, 0) \
                 ON CONFLICT (topic) DO UPDATE SET last_seq = pubsub_topic_seq.last_seq \
                 RETURNING last_seq",
            )
            .bind(&a.topic)
            .fetch_one(&mut *$tx)
            .await?;
            if a.drop_unsubscribed {
                let cursor: Option<i32> =
                    sqlx::query_scalar("SELECT 1 FROM pubsub_cursor WHERE topic = $1 LIMIT 1")
                        .bind(&a.topic)
                        .fetch_optional(&mut *$tx)
                        .await?;
                if cursor.is_none() {
                    a.dropped = true;
                    accepted[i] = vec![true; a.groups.len()];
                    continue;
                }
            }
            let mut depth = match a.refuse_past {
                Some(max) => {
                    let all: u64 = a.groups.iter().map(|g| g.len() as u64).sum();
                    let room = |floor: i64| ((last - floor).max(0) as u64) + all <= max;
                    match a.known_floor {
                        // Even the old floor leaves room for all: no need to read it.
                        Some(f) if f <= last && room(f) => (last - f).max(0) as u64,
                        _ => {
                            let f = floor_in_tx!($tx, &a.topic, last, $now);
                            a.known_floor = Some(f);
                            (last - f).max(0) as u64
                        }
                    }
                }
                None => 0,
            };
            let mut seq = last;
            let mut flags = Vec::with_capacity(a.groups.len());
            for g in a.groups.iter_mut() {
                let fits = a
                    .refuse_past
                    .is_none_or(|max| depth + g.len() as u64 <= max);
                if fits {
                    for m in g.iter_mut() {
                        seq += 1;
                        m.seq = seq;
                    }
                    depth += g.len() as u64;
                }
                flags.push(fits);
            }
            if seq != last {
                sqlx::query("UPDATE pubsub_topic_seq SET last_seq = $2 WHERE topic = $1")
                    .bind(&a.topic)
                    .bind(seq)
                    .execute(&mut *$tx)
                    .await?;
            }
            accepted[i] = flags;
        }
        accepted
    }};
}

/// Runs the engine's own function of the log (their SQL differs), timed as `on_pool!` times.
macro_rules! by_engine {
    ($store:expr, $pg:path, $sqlite:path $(, $arg:expr)* $(,)?) => {{
        let timing = super::Timing::start(module_path!());
        let result = match $store {
            Store::Postgres(p) => $pg(p, $($arg),*).await,
            Store::Sqlite(p) => $sqlite(p, $($arg),*).await,
        };
        timing.finish(&result);
        result
    }};
}

mod pg {
    use super::*;

    /// The rows' columns of a flush, as arrays for `UNNEST` (one prepared statement, no
    /// text that grows with the batch): every message of the accepted groups, in order.
    struct Columns<'a> {
        topic: Vec<&'a str>,
        seq: Vec<i64>,
        msg_id: Vec<&'a str>,
        pub_time: Vec<i64>,
        expires_at: Vec<Option<i64>>,
        priority: Vec<i16>,
        mime_type: Vec<&'a str>,
        correl_id: Vec<Option<&'a str>>,
        in_reply_to: Vec<Option<&'a str>>,
        ext_client_id: Vec<Option<&'a str>>,
        published_by: Vec<&'a str>,
        data: Vec<&'a [u8]>,
    }

    impl<'a> Columns<'a> {
        fn of(msgs: impl Iterator<Item = &'a Message> + Clone) -> Self {
            let n = msgs.clone().count();
            let mut c = Columns {
                topic: Vec::with_capacity(n),
                seq: Vec::with_capacity(n),
                msg_id: Vec::with_capacity(n),
                pub_time: Vec::with_capacity(n),
                expires_at: Vec::with_capacity(n),
                priority: Vec::with_capacity(n),
                mime_type: Vec::with_capacity(n),
                correl_id: Vec::with_capacity(n),
                in_reply_to: Vec::with_capacity(n),
                ext_client_id: Vec::with_capacity(n),
                published_by: Vec::with_capacity(n),
                data: Vec::with_capacity(n),
            };
            for m in msgs {
                c.topic.push(m.topic.as_str());
                c.seq.push(m.seq);
                c.msg_id.push(m.msg_id.as_str());
                c.pub_time.push(m.pub_time_ms);
                c.expires_at.push(m.expires_at_ms);
                c.priority.push(i16::from(m.priority));
                c.mime_type.push(m.mime_type.as_str());
                c.correl_id.push(m.correl_id.as_deref());
                c.in_reply_to.push(m.in_reply_to.as_deref());
                c.ext_client_id.push(m.ext_client_id.as_deref());
                c.published_by.push(m.published_by.as_str());
                c.data.push(&m.data[..]);
            }
            c
        }

        fn len(&self) -> usize {
            self.msg_id.len()
        }

        /// Binds the columns after what `q` has bound already (`topic` and `seq` too when
        /// `with_topic_seq`), in the column order of `pubsub_msg` after `part`.
        fn bind(
            self,
            q: sqlx::query::Query<'a, sqlx::Postgres, sqlx::postgres::PgArguments>,
            with_topic_seq: bool,
        ) -> sqlx::query::Query<'a, sqlx::Postgres, sqlx::postgres::PgArguments> {
            let q = if with_topic_seq {
                q.bind(self.topic).bind(self.seq)
            } else {
                q
            };
            q.bind(self.msg_id)
                .bind(self.pub_time)
                .bind(self.expires_at)
                .bind(self.priority)
                .bind(self.mime_type)
                .bind(self.correl_id)
                .bind(self.in_reply_to)
                .bind(self.ext_client_id)
                .bind(self.published_by)
                .bind(self.data)
        }
    }

    /// One statement, committed on its own, for the common flush: one topic whose groups
    /// all fit (no depth check, or even the caller's old floor leaves room) and that is not
    /// dropped when unsubscribed. The seq row is moved on by the whole flush and the rows
    /// are numbered from it inside the statement: one round trip to the server instead of
    /// the transaction's six (BEGIN, partition, seq row read and write, insert, COMMIT),
    /// which is most of a flush's time at a steady rate. `Ok(false)`: it does not fit
    /// under the old floor (nothing was written); the caller takes the transaction's path,
    /// which reads the floor again and decides per group.
    pub(super) async fn append_one_statement(
        pool: &sqlx::PgPool,
        a: &mut TopicAppend,
    ) -> Result<Result<bool>> {
        let n = a.groups.iter().map(Vec::len).sum::<usize>() as i64;
        let max_depth = a.refuse_past.map(|m| i64::try_from(m).unwrap_or(i64::MAX));
        // More than the depth allows even on an empty topic: the transaction's path
        // decides per group. (This also covers a topic without a seq row yet, whose upsert
        // takes its INSERT branch, where the WHERE below does not apply.)
        if max_depth.is_some_and(|max| n > max) {
            return Ok(Ok(false));
        }
        let cols = Columns::of(a.groups.iter().flatten());
        debug_assert_eq!(cols.len() as i64, n);
        // The partition row FOR SHARE, then the seq row, as the transaction's path (the
        // upsert selects from `p`, so it runs after it). `ON CONFLICT … DO UPDATE … WHERE`:
        // a flush that does not fit under the old floor returns no row and nothing is
        // inserted. The insert's row count comes back beside the last seq: fewer rows than
        // messages would mean they were numbered and not stored.
        let q = sqlx::query(
            "WITH p AS (SELECT current FROM pubsub_parts WHERE id = 1 FOR SHARE), \
             s AS (INSERT INTO pubsub_topic_seq AS t (topic, last_seq) SELECT $1, $2 FROM p \
                   ON CONFLICT (topic) DO UPDATE SET last_seq = t.last_seq + $2 \
                   WHERE $4::bigint IS NULL \
                      OR ($3::bigint <= t.last_seq AND t.last_seq - $3::bigint + $2 <= $4::bigint) \
                   RETURNING last_seq), \
             i AS (INSERT INTO pubsub_msg (part, topic, seq, msg_id, pub_time, expires_at, \
                   priority, mime_type, correl_id, in_reply_to, ext_client_id, published_by, data) \
                   SELECT p.current, $1, s.last_seq - $2 + u.ord, u.msg_id, u.pub_time, \
                   u.expires_at, u.priority, u.mime_type, u.correl_id, u.in_reply_to, \
                   u.ext_client_id, u.published_by, u.data \
                   FROM p, s, UNNEST($5::text[], $6::bigint[], $7::bigint[], $8::smallint[], \
                   $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::bytea[]) \
                   WITH ORDINALITY AS u(msg_id, pub_time, expires_at, priority, mime_type, \
                   correl_id, in_reply_to, ext_client_id, published_by, data, ord) \
                   RETURNING 1) \
             SELECT last_seq, (SELECT count(*) FROM i) FROM s",
        )
        .bind(a.topic.as_str())
        .bind(n)
        .bind(a.known_floor.unwrap_or(0))
        .bind(max_depth);
        let q = cols.bind(q, false);
        // Acquired apart from the statement: a failure to get a connection stored nothing.
        let mut conn = pool.acquire().await?;
        let row = match q.fetch_optional(&mut *conn).await {
            Ok(row) => row,
            // The server refused the statement: it rolled back, nothing stored.
            Err(sqlx::Error::Database(e)) => return Err(sqlx::Error::Database(e).into()),
            // The connection broke with the statement sent: committed or not, nobody knows.
            Err(e) => return Ok(Err(e.into())),
        };
        let Some(row) = row else {
            return Ok(Ok(false));
        };
        // Committed: a value that cannot be read, or rows missing, leave the outcome unknown.
        let (last, stored): (i64, i64) = match (row.try_get(0), row.try_get(1)) {
            (Ok(last), Ok(stored)) => (last, stored),
            (Err(e), _) | (_, Err(e)) => return Ok(Err(e.into())),
        };
        if stored != n {
            return Ok(Err(StoreError::Invalid(format!(
                "pubsub log: a flush of {n} messages to {:?} stored {stored}",
                a.topic
            ))));
        }
        let mut seq = last - n;
        for m in a.groups.iter_mut().flatten() {
            seq += 1;
            m.seq = seq;
        }
        Ok(Ok(true))
    }

    pub(super) async fn append(
        pool: &sqlx::PgPool,
        appends: &mut [TopicAppend],
        now: i64,
    ) -> Result<Result<Vec<Vec<bool>>>> {
        if let [a] = appends
            && !a.drop_unsubscribed
            && (a.refuse_past.is_none() || a.known_floor.is_some())
            && a.groups.iter().any(|g| !g.is_empty())
        {
            match append_one_statement(pool, a).await? {
                Ok(true) => return Ok(Ok(vec![vec![true; a.groups.len()]])),
                Ok(false) => {}
                Err(e) => return Ok(Err(e)),
            }
        }
        let mut tx = pool.begin_write().await?;
        // FOR SHARE: a rotation's switch of `current` waits for this flush to commit, and
        // this flush for the switch, so no row is written to a partition being emptied.
        let part: i16 =
            sqlx::query_scalar("SELECT current FROM pubsub_parts WHERE id = 1 FOR SHARE")
                .fetch_one(&mut *tx)
                .await?;
        let accepted = number_groups!(tx, appends, now);
        let cols = Columns::of(
            appends
                .iter()
                .zip(&accepted)
                .filter(|(a, _)| !a.dropped)
                .flat_map(|(a, f)| a.groups.iter().zip(f).filter(|(_, ok)| **ok))
                .flat_map(|(g, _)| g.iter()),
        );
        if cols.len() > 0 {
            let q = sqlx::query(
                "INSERT INTO pubsub_msg (part, topic, seq, msg_id, pub_time, expires_at, \
                 priority, mime_type, correl_id, in_reply_to, ext_client_id, published_by, data) \
                 SELECT $1, * FROM UNNEST($2::text[], $3::bigint[], $4::text[], $5::bigint[], \
                 $6::bigint[], $7::smallint[], $8::text[], $9::text[], $10::text[], $11::text[], \
                 $12::text[], $13::bytea[])",
            )
            .bind(part);
            cols.bind(q, true).execute(&mut *tx).await?;
        }
        // Outer error: before COMMIT (nothing stored); inner: at COMMIT (unknown).
        Ok(tx
            .commit()
            .await
            .map(|_| accepted)
            .map_err(StoreError::from))
    }

    pub(super) async fn clean(
        pool: &sqlx::PgPool,
        part: i16,
        expect_current: i16,
        now: i64,
    ) -> Result<CleanFigures> {
        check_part(part)?;
        let table = format!("pubsub_msg_{part}");
        let mut tx = pool.begin_write().await?;
        // A TRUNCATE waiting behind a long reader would queue every later reader of the
        // log behind it: give up instead, and try again at the next round.
        sqlx::query("SET LOCAL lock_timeout = '2s'")
            .execute(&mut *tx)
            .await?;
        // FOR SHARE holds `current` still until COMMIT: the partition emptied here is not
        // the one publishes write to, whatever another (late) rotator does meanwhile.
        let current: i16 =
            sqlx::query_scalar("SELECT current FROM pubsub_parts WHERE id = 1 FOR SHARE")
                .fetch_one(&mut *tx)
                .await?;
        if current != expect_current || current == part {
            return Err(StoreError::Invalid(format!(
                "pubsub log: partition {part} not cleaned: the current partition is \
                 {current}, not {expect_current} (another server rotated)"
            )));
        }
        let bytes_before: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT pg_total_relation_size('{table}')"
        )))
        .fetch_one(&mut *tx)
        .await?;
        let rows: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                .fetch_one(&mut *tx)
                .await?;
        let moved = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE pubsub_msg m SET part = $2 WHERE m.part = $3 AND {LIVE}"
        )))
        .bind(now)
        .bind(current)
        .bind(part)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query(sqlx::AssertSqlSafe(format!("TRUNCATE {table}")))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(CleanFigures {
            part,
            moved,
            removed: (rows.max(0) as u64).saturating_sub(moved),
            bytes_before,
        })
    }

    pub(super) async fn figures(pool: &sqlx::PgPool) -> Result<LogFigures> {
        let r = sqlx::query("SELECT current, rotated_at FROM pubsub_parts WHERE id = 1")
            .fetch_one(pool)
            .await?;
        let mut parts = Vec::new();
        for part in 0..LOG_PARTS {
            let table = format!("pubsub_msg_{part}");
            let f = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT count(*), pg_total_relation_size('{table}') FROM {table}"
            )))
            .fetch_one(pool)
            .await?;
            parts.push(PartFigures {
                part,
                rows: f.try_get(0)?,
                bytes: f.try_get(1)?,
            });
        }
        Ok(LogFigures {
            current: r.try_get(0)?,
            rotated_at_ms: r.try_get(1)?,
            parts,
            file_bytes: None,
        })
    }
}

mod lite {
    use super::*;

    pub(super) async fn append(
        pool: &sqlx::SqlitePool,
        appends: &mut [TopicAppend],
        now: i64,
    ) -> Result<Result<Vec<Vec<bool>>>> {
        // BEGIN IMMEDIATE: the file's write lock for the whole flush (one writer at a time,
        // so seq order is commit order here without row locks).
        let mut tx = pool.begin_write().await?;
        let part: i16 = sqlx::query_scalar("SELECT current FROM pubsub_parts WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
        let accepted = number_groups!(tx, appends, now);
        let rows: Vec<&Message> = appends
            .iter()
            .zip(&accepted)
            .filter(|(a, _)| !a.dropped)
            .flat_map(|(a, f)| a.groups.iter().zip(f).filter(|(_, ok)| **ok))
            .flat_map(|(g, _)| g.iter())
            .collect();
        for chunk in rows.chunks(SQLITE_ROWS_PER_INSERT) {
            let mut sql = String::from(
                "INSERT INTO pubsub_msg (part, topic, seq, msg_id, pub_time, expires_at, \
                 priority, mime_type, correl_id, in_reply_to, ext_client_id, published_by, data) \
                 VALUES ",
            );
            // Anonymous `?` placeholders, bound in order: a numbered one (`$7`, `?7`) is
            // named, and SQLite finds a parameter's name by a scan of every name, so binding
            // 6,500 of them cost a quadratic 21M string compares a flush (two thirds of the
            // server's CPU in a GD benchmark).
            for i in 0..chunk.len() {
                if i > 0 {
                    sql.push(',');
                }
                sql.push_str("(?,?,?,?,?,?,?,?,?,?,?,?,?)");
            }
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for m in chunk {
                q = q
                    .bind(part)
                    .bind(m.topic.as_str())
                    .bind(m.seq)
                    .bind(m.msg_id.as_str())
                    .bind(m.pub_time_ms)
                    .bind(m.expires_at_ms)
                    .bind(i16::from(m.priority))
                    .bind(m.mime_type.as_str())
                    .bind(m.correl_id.as_deref())
                    .bind(m.in_reply_to.as_deref())
                    .bind(m.ext_client_id.as_deref())
                    .bind(m.published_by.as_str())
                    .bind(&m.data[..]);
            }
            q.execute(&mut *tx).await?;
        }
        // Outer error: before COMMIT (nothing stored); inner: at COMMIT (unknown).
        Ok(tx
            .commit()
            .await
            .map(|_| accepted)
            .map_err(StoreError::from))
    }

    pub(super) async fn clean(
        pool: &sqlx::SqlitePool,
        part: i16,
        expect_current: i16,
        now: i64,
    ) -> Result<CleanFigures> {
        check_part(part)?;
        let mut out = CleanFigures {
            part,
            ..CleanFigures::default()
        };
        out.bytes_before = sqlx::query_scalar(
            "SELECT COALESCE(sum(length(data) + length(msg_id) + length(topic) \
             + length(mime_type) + length(published_by) + 40), 0) FROM pubsub_msg WHERE part = $1",
        )
        .bind(part)
        .fetch_one(pool)
        .await?;
        // In steps, each its own transaction, the dead rows go. The live ones stay where
        // they are: a label is all a generation is here, and relabelling them would rewrite
        // every live row at each rotation for nothing.
        loop {
            let mut tx = pool.begin_write().await?;
            let current: i16 = sqlx::query_scalar("SELECT current FROM pubsub_parts WHERE id = 1")
                .fetch_one(&mut *tx)
                .await?;
            if current != expect_current || current == part {
                return Err(StoreError::Invalid(format!(
                    "pubsub log: partition {part} not cleaned: the current partition is \
                     {current}, not {expect_current} (another server rotated)"
                )));
            }
            let n = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM pubsub_msg WHERE rowid IN (SELECT m.rowid FROM pubsub_msg m \
                 WHERE m.part = $2 AND NOT ({LIVE}) LIMIT $3)"
            )))
            .bind(now)
            .bind(part)
            .bind(SQLITE_ROWS_PER_STEP)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            tx.commit().await?;
            out.removed += n;
            if n < SQLITE_ROWS_PER_STEP as u64 {
                break;
            }
        }
        Ok(out)
    }

    pub(super) async fn figures(pool: &sqlx::SqlitePool) -> Result<LogFigures> {
        let r = sqlx::query("SELECT current, rotated_at FROM pubsub_parts WHERE id = 1")
            .fetch_one(pool)
            .await?;
        let counted = sqlx::query(
            "SELECT part, count(*), COALESCE(sum(length(data) + length(msg_id) + length(topic) \
             + length(mime_type) + length(published_by) + 40), 0) FROM pubsub_msg GROUP BY part",
        )
        .fetch_all(pool)
        .await?;
        let mut parts: Vec<PartFigures> = (0..LOG_PARTS)
            .map(|part| PartFigures {
                part,
                rows: 0,
                bytes: 0,
            })
            .collect();
        for c in counted {
            let part: i16 = c.try_get(0)?;
            if let Some(p) = parts.get_mut(part.clamp(0, LOG_PARTS - 1) as usize) {
                p.rows = c.try_get(1)?;
                p.bytes = c.try_get(2)?;
            }
        }
        let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
            .fetch_one(pool)
            .await?;
        let page_size: i64 = sqlx::query_scalar("PRAGMA page_size")
            .fetch_one(pool)
            .await?;
        Ok(LogFigures {
            current: r.try_get(0)?,
            rotated_at_ms: r.try_get(1)?,
            parts,
            file_bytes: Some(pages * page_size),
        })
    }
}

fn check_part(part: i16) -> Result<()> {
    if !(0..LOG_PARTS).contains(&part) {
        return Err(StoreError::Invalid(format!(
            "pubsub log: partition {part} is not one of 0-{}",
            LOG_PARTS - 1
        )));
    }
    Ok(())
}

impl Store {
    /// Appends a flush in one transaction: per topic (in name order) its seq row is locked
    /// and moved on, a group that would take an `on_full: refuse` topic past its depth is
    /// refused whole, and every accepted message is inserted into the current partition.
    /// For each `appends[i].groups[j]`: whether it was appended (its messages' `seq` set;
    /// or, `dropped`, accepted and dropped). An error before COMMIT: nothing was appended;
    /// at COMMIT ([`AppendError::unknown_outcome`]): it may have been.
    pub async fn append_log(
        &self,
        appends: &mut [TopicAppend],
        now_ms: i64,
    ) -> std::result::Result<Vec<Vec<bool>>, AppendError> {
        let result = match by_engine!(self, pg::append, lite::append, appends, now_ms) {
            Ok(Ok(accepted)) => Ok(accepted),
            Ok(Err(error)) => Err(AppendError {
                error,
                unknown_outcome: true,
            }),
            Err(error) => Err(AppendError {
                error,
                unknown_outcome: false,
            }),
        };
        for a in appends.iter_mut() {
            if a.dropped {
                for m in a.groups.iter_mut().flatten() {
                    m.seq = 0;
                }
            }
        }
        if result.is_err() {
            // Nothing of it committed (or nobody knows): no seq is handed on.
            for a in appends.iter_mut() {
                for m in a.groups.iter_mut().flatten() {
                    m.seq = 0;
                }
            }
        }
        result
    }

    /// PostgreSQL: [`Store::append_log`]'s one-statement path alone, for a flush of one
    /// topic (`appends` holds one): `Some(true)` appended (seqs set), `Some(false)` it did
    /// not fit under `known_floor` and nothing was written. SQLite (which has no such path):
    /// None. For tests that must tell the paths apart.
    #[doc(hidden)]
    pub async fn append_log_one_statement_for_tests(
        &self,
        append: &mut TopicAppend,
    ) -> Result<Option<bool>> {
        match self {
            Store::Postgres(p) => match pg::append_one_statement(p, append).await? {
                Ok(fit) => Ok(Some(fit)),
                Err(e) => Err(e),
            },
            Store::Sqlite(_) => Ok(None),
        }
    }

    /// The last seq appended to each topic's log (topics without a GD message yet: absent).
    pub async fn log_last_seqs(&self) -> Result<HashMap<String, i64>> {
        let rows: Vec<(String, i64)> = on_pool!(self, p => sqlx::query_as(
            "SELECT topic, last_seq FROM pubsub_topic_seq"
        )
        .fetch_all(p)
        .await?);
        Ok(rows.into_iter().collect())
    }

    /// The last seq appended to `topic` (0 before its first GD message).
    pub async fn log_last_seq(&self, topic: &str) -> Result<i64> {
        let v: Option<i64> = on_pool!(self, p => sqlx::query_scalar(
            "SELECT last_seq FROM pubsub_topic_seq WHERE topic = $1"
        )
        .bind(topic)
        .fetch_optional(p)
        .await?);
        Ok(v.unwrap_or(0))
    }

    /// For each topic with a cursor, the lowest `acked_upto` of its cursors (of live
    /// subscriptions: [`LIVE_CURSOR`]).
    pub async fn log_min_cursors(&self) -> Result<HashMap<String, i64>> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT c.topic, min(c.acked_upto) FROM pubsub_cursor c WHERE {LIVE_CURSOR} \
             GROUP BY c.topic"
        ));
        let rows: Vec<(String, i64)> = on_pool!(self, p => sqlx::query_as(sql)
        .fetch_all(p)
        .await?);
        Ok(rows.into_iter().collect())
    }

    /// Up to `limit` messages of `topic` with seq > `after_seq`, by seq. Expired ones are
    /// included (the reader counts them as it skips them); rows rotation removed are not
    /// (so seqs may have gaps below the topic's lowest cursor or where messages expired).
    pub async fn read_after(
        &self,
        topic: &str,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<Message>> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM pubsub_msg WHERE topic = $1 AND seq > $2 ORDER BY seq LIMIT $3"
        ));
        Ok(on_pool!(self, p => {
            let rows = sqlx::query(sql)
                .bind(topic)
                .bind(after_seq)
                .bind(i64::from(limit))
                .fetch_all(p)
                .await?;
            rows.iter().map(message_of).collect::<std::result::Result<Vec<_>, _>>()?
        }))
    }

    /// The messages of `topic` with `from <= seq <= to`, by seq (as [`Store::read_after`]).
    pub async fn read_range(&self, topic: &str, from: i64, to: i64) -> Result<Vec<Message>> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM pubsub_msg WHERE topic = $1 AND seq >= $2 AND seq <= $3 \
             ORDER BY seq"
        ));
        Ok(on_pool!(self, p => {
            let rows = sqlx::query(sql)
                .bind(topic)
                .bind(from)
                .bind(to)
                .fetch_all(p)
                .await?;
            rows.iter().map(message_of).collect::<std::result::Result<Vec<_>, _>>()?
        }))
    }

    /// The lowest seq of `topic` still kept and not expired at `now_ms`, if any.
    pub async fn log_oldest_kept(&self, topic: &str, now_ms: i64) -> Result<Option<i64>> {
        Ok(on_pool!(self, p => sqlx::query_scalar(
            "SELECT min(seq) FROM pubsub_msg WHERE topic = $1 \
             AND (expires_at IS NULL OR expires_at > $2)"
        )
        .bind(topic)
        .bind(now_ms)
        .fetch_one(p)
        .await?))
    }

    /// The lowest seq of `topic` published at or after `pub_time_ms` and still kept, if any
    /// (a pattern subscription's cursor on a topic made after it starts just before it).
    pub async fn log_first_since(&self, topic: &str, pub_time_ms: i64) -> Result<Option<i64>> {
        Ok(on_pool!(self, p => sqlx::query_scalar(
            "SELECT min(seq) FROM pubsub_msg WHERE topic = $1 AND pub_time >= $2"
        )
        .bind(topic)
        .bind(pub_time_ms)
        .fetch_one(p)
        .await?))
    }

    /// Drops a deleted topic's log: its messages and its cursors, in one transaction. Its
    /// seq row stays, so a topic made again under the name goes on from the seq it had: a
    /// delivery task that still remembers a position in the old log (a pattern
    /// subscription's) skips nothing of the new one, and no seq is ever used twice. The seq
    /// row is locked first (PostgreSQL: `FOR UPDATE`; SQLite: the write lock of `BEGIN
    /// IMMEDIATE`), so a flush appending to the topic meanwhile commits either before (and
    /// its rows go too) or after (its rows are dead: the topic is not defined, [`LIVE`],
    /// and the rotation removes them). A rare operation: a plain DELETE.
    pub async fn drop_topic_log(&self, topic: &str) -> Result<()> {
        on_pool!(self, p => {
            let mut tx = p.begin_write().await?;
            if matches!(self, Store::Postgres(_)) {
                sqlx::query("SELECT last_seq FROM pubsub_topic_seq WHERE topic = $1 FOR UPDATE")
                    .bind(topic)
                    .fetch_optional(&mut *tx)
                    .await?;
            }
            sqlx::query("DELETE FROM pubsub_cursor WHERE topic = $1")
                .bind(topic)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM pubsub_msg WHERE topic = $1")
                .bind(topic)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?
        });
        Ok(())
    }

    /// Collects what deleted subscriptions and topics left behind (the rotator runs it,
    /// under the lease `#rotate`): dead letters of a subscription that has neither a
    /// `pubsub_subs` row nor a cursor left (so they go a sweep after its cursors), cursors
    /// of a subscription without `pubsub_subs` row not written since `now_ms - grace_ms`,
    /// and expired delivery leases of such subscriptions (never a `#` lease). A topic's seq
    /// row is never collected (seqs never restart, see [`Store::drop_topic_log`]); the
    /// messages of a topic without `pubsub_topics` row are dead ([`LIVE`]) and the rotation
    /// removes them with their partition (no DELETE of messages).
    pub async fn log_gc(&self, now_ms: i64, grace_ms: i64) -> Result<GcFigures> {
        let no_sub = |t: &str| {
            format!("NOT EXISTS (SELECT 1 FROM pubsub_subs u WHERE u.name = {t}.sub_key)")
        };
        let dead = sqlx::AssertSqlSafe(format!(
            "DELETE FROM pubsub_dead WHERE {} AND NOT EXISTS \
             (SELECT 1 FROM pubsub_cursor c WHERE c.sub_key = pubsub_dead.sub_key)",
            no_sub("pubsub_dead")
        ));
        let cursors = sqlx::AssertSqlSafe(format!(
            "DELETE FROM pubsub_cursor WHERE {} AND updated_at < $1",
            no_sub("pubsub_cursor")
        ));
        let leases = sqlx::AssertSqlSafe(format!(
            "DELETE FROM pubsub_lease WHERE {} AND sub_key NOT LIKE '#%' AND expires_at < $1",
            no_sub("pubsub_lease")
        ));
        Ok(on_pool!(self, p => {
            let mut tx = p.begin_write().await?;
            let dead_letters = sqlx::query(dead).execute(&mut *tx).await?.rows_affected();
            let cursors = sqlx::query(cursors)
                .bind(now_ms - grace_ms)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            let leases = sqlx::query(leases)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            GcFigures {
                dead_letters,
                cursors,
                leases,
            }
        }))
    }

    /// The log's figures: each partition's rows and bytes, which is current and since when.
    pub async fn log_figures(&self) -> Result<LogFigures> {
        by_engine!(self, pg::figures, lite::figures,)
    }

    /// The partition publishes write to, and when it became current (Unix ms).
    pub async fn log_current_part(&self) -> Result<(i16, i64)> {
        Ok(on_pool!(self, p => sqlx::query_as(
            "SELECT current, rotated_at FROM pubsub_parts WHERE id = 1"
        )
        .fetch_one(p)
        .await?))
    }

    /// The sum of every topic's `last_seq`: GD messages ever appended (the rotation tells
    /// how many were appended since it last rotated without counting a partition's rows).
    pub async fn log_appended_total(&self) -> Result<i64> {
        let v: Option<i64> = on_pool!(self, p => sqlx::query_scalar(
            "SELECT CAST(sum(last_seq) AS BIGINT) FROM pubsub_topic_seq"
        )
        .fetch_one(p)
        .await?);
        Ok(v.unwrap_or(0))
    }

    /// Makes the partition after `from` current, if `from` still is: false when another
    /// server rotated first. `now_ms` becomes its `rotated_at`.
    pub async fn switch_log_part(&self, from: i16, now_ms: i64) -> Result<bool> {
        check_part(from)?;
        let to = (from + 1) % LOG_PARTS;
        let n = on_pool!(self, p => sqlx::query(
            "UPDATE pubsub_parts SET current = $1, rotated_at = $2 WHERE id = 1 AND current = $3"
        )
        .bind(to)
        .bind(now_ms)
        .bind(from)
        .execute(p)
        .await?
        .rows_affected());
        Ok(n == 1)
    }

    /// Cleans partition `part` (not the current one, which must be `current`). PostgreSQL:
    /// its live rows (see [`LIVE`]) move into the current partition and it is truncated.
    /// SQLite: its dead rows are deleted in steps, its live ones stay. Refused ([`StoreError::Invalid`]) when `current`
    /// is no longer current.
    pub async fn clean_log_part(
        &self,
        part: i16,
        current: i16,
        now_ms: i64,
    ) -> Result<CleanFigures> {
        by_engine!(self, pg::clean, lite::clean, part, current, now_ms)
    }

    /// Takes or renews the rotation lease (`pubsub_lease` key `#rotate`) for `me`: true when
    /// `me` holds it until `now + ttl`.
    pub async fn take_rotate_lease(&self, me: &str, now_ms: i64, ttl: Duration) -> Result<bool> {
        let until = now_ms + ttl.as_millis() as i64;
        let n = on_pool!(self, p => sqlx::query(
            "INSERT INTO pubsub_lease (sub_key, holder, expires_at) VALUES ('#rotate', $1, $2) \
             ON CONFLICT (sub_key) DO UPDATE SET holder = excluded.holder, \
             expires_at = excluded.expires_at \
             WHERE pubsub_lease.holder = excluded.holder OR pubsub_lease.expires_at < $3"
        )
        .bind(me)
        .bind(until)
        .bind(now_ms)
        .execute(p)
        .await?
        .rows_affected());
        Ok(n == 1)
    }

    /// Hands the rotation lease back (a clean stop).
    pub async fn release_rotate_lease(&self, me: &str) -> Result<()> {
        on_pool!(self, p => sqlx::query(
            "DELETE FROM pubsub_lease WHERE sub_key = '#rotate' AND holder = $1"
        )
        .bind(me)
        .execute(p)
        .await
        .map(drop)?);
        Ok(())
    }
}

impl super::Outcome for LogFigures {
    fn failed(&self) -> bool {
        false
    }
}

impl super::Outcome for GcFigures {
    fn failed(&self) -> bool {
        false
    }
}

impl super::Outcome for CleanFigures {
    fn failed(&self) -> bool {
        false
    }
}
