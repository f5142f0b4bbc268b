//! The pub/sub message log in the store (`store/pubsub_log.rs`) and the publish path through
//! the broker, run identically on SQLite and on PostgreSQL.
//!
//! PostgreSQL: a fresh database per test on the machine's server (OXBUS_TEST_PG, default
//! postgres://postgres@127.0.0.1:5432/test), dropped afterwards. A missing server fails the
//! test loudly; it never skips.

use bytes::Bytes;
use oxbus_supervisor::metrics::Metrics;
use oxbus_supervisor::model::object::ObjectSet;
use oxbus_supervisor::model::pubsub::Message;
use oxbus_supervisor::pubsub::{Broker, Caller, NewMsg, PubsubError};
use oxbus_supervisor::store::Store;
use oxbus_supervisor::store::pubsub_log::TopicAppend;
use sqlx::Connection;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

static N: AtomicU32 = AtomicU32::new(0);

fn admin_url() -> String {
    std::env::var("OXBUS_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A store on a fresh database of each engine.
enum Engine {
    Sqlite(std::path::PathBuf),
    Postgres(String),
}

impl Engine {
    async fn sqlite() -> (Store, Engine) {
        let dir = std::env::temp_dir().join(format!(
            "oxbus-pubsub-log-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite:{}", dir.join("oxbus.db").display());
        (Store::open(&url).await.unwrap(), Engine::Sqlite(dir))
    }

    async fn postgres() -> (Store, Engine) {
        let db = format!(
            "oxbus_pubsub_log_test_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let mut admin = sqlx::PgConnection::connect(&admin_url())
            .await
            .unwrap_or_else(|e| {
                panic!("PostgreSQL at {} is needed for this test: {e}", admin_url())
            });
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
            .execute(&mut admin)
            .await
            .unwrap();
        admin.close().await.unwrap();
        let url = pg_url(&db);
        (Store::open(&url).await.unwrap(), Engine::Postgres(db))
    }

    async fn cleanup(self, store: Store) {
        store.close().await;
        match self {
            Engine::Sqlite(dir) => std::fs::remove_dir_all(dir).unwrap(),
            Engine::Postgres(db) => {
                let mut admin = sqlx::PgConnection::connect(&admin_url()).await.unwrap();
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE {db} WITH (FORCE)"
                )))
                .execute(&mut admin)
                .await
                .unwrap();
            }
        }
    }
}

fn pg_url(db: &str) -> String {
    let base = admin_url();
    format!("{}/{db}", &base[..base.rfind('/').unwrap()])
}

/// Runs `$test(store)` on a fresh SQLite store, then on a fresh PostgreSQL one.
macro_rules! both {
    ($sqlite:ident, $pg:ident, $test:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $sqlite() {
            let (store, engine) = Engine::sqlite().await;
            $test(&store).await;
            engine.cleanup(store).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $pg() {
            let (store, engine) = Engine::postgres().await;
            $test(&store).await;
            engine.cleanup(store).await;
        }
    };
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn msg(topic: &str, i: usize) -> Message {
    Message {
        topic: topic.into(),
        seq: 0,
        msg_id: format!(
            "zpsm{:024x}",
            (N.fetch_add(1, Ordering::SeqCst) as u64) << 20 | i as u64
        ),
        pub_time_ms: now_ms(),
        expires_at_ms: None,
        priority: 5,
        has_gd: true,
        mime_type: "text/plain".into(),
        correl_id: None,
        in_reply_to: None,
        ext_client_id: None,
        published_by: "service:test".into(),
        data: Bytes::from(format!("message {i}")),
    }
}

fn group(topic: &str, n: usize) -> Vec<Message> {
    (0..n).map(|i| msg(topic, i)).collect()
}

/// Runs a statement the broker's other parts own (cursors), straight on the database.
async fn raw(store: &Store, sql: &str) {
    match store {
        Store::Sqlite(p) => {
            sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(p)
                .await
                .unwrap();
        }
        Store::Postgres(p) => {
            sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(p)
                .await
                .unwrap();
        }
    }
}

/// Subscriptions' object rows (`pubsub_subs`), as the admin writes them with their cursors.
async fn sub_rows(store: &Store, sub_keys: &[&str]) {
    for k in sub_keys {
        raw(
            store,
            &format!(
                "INSERT INTO pubsub_subs (name, definition, updated_by, updated_at) \
                 VALUES ('{k}', '{{}}', 'test', 0)"
            ),
        )
        .await;
    }
}

async fn append_and_read(store: &Store) {
    let mut full = msg("/t/a", 0);
    full.correl_id = Some("c1".into());
    full.in_reply_to = Some("zpsm000000000000000000000001".into());
    full.ext_client_id = Some("ext".into());
    full.expires_at_ms = Some(now_ms() + 60_000);
    full.priority = 9;
    full.mime_type = "application/json".into();
    full.data = Bytes::from_static(&[0, 159, 146, 150, 255]);
    let mut appends = vec![
        TopicAppend {
            topic: "/t/b".into(),
            refuse_past: None,
            known_floor: None,
            drop_unsubscribed: false,
            dropped: false,
            groups: vec![group("/t/b", 2)],
        },
        TopicAppend {
            topic: "/t/a".into(),
            refuse_past: None,
            known_floor: None,
            drop_unsubscribed: false,
            dropped: false,
            groups: vec![vec![full.clone()], group("/t/a", 3)],
        },
    ];
    let ok = store.append_log(&mut appends, now_ms()).await.unwrap();
    assert_eq!(ok, vec![vec![true], vec![true, true]]);
    let seqs: Vec<i64> = appends[1].groups.iter().flatten().map(|m| m.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4]);
    assert_eq!(appends[0].groups[0][1].seq, 2);

    let read = store.read_after("/t/a", 0, 100).await.unwrap();
    assert_eq!(read.len(), 4);
    full.seq = 1;
    assert_eq!(read[0], full, "every field comes back as written");
    assert_eq!(read[3], appends[1].groups[1][2]);
    let page = store.read_after("/t/a", 1, 2).await.unwrap();
    assert_eq!(page.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![2, 3]);
    let range = store.read_range("/t/a", 2, 4).await.unwrap();
    assert_eq!(
        range.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![2, 3, 4]
    );
    assert!(store.read_after("/t/none", 0, 10).await.unwrap().is_empty());

    let last = store.log_last_seqs().await.unwrap();
    assert_eq!(last.get("/t/a"), Some(&4));
    assert_eq!(last.get("/t/b"), Some(&2));
    assert_eq!(store.log_last_seq("/t/none").await.unwrap(), 0);
    assert_eq!(store.log_appended_total().await.unwrap(), 6);
    assert_eq!(
        store.log_oldest_kept("/t/a", now_ms()).await.unwrap(),
        Some(1)
    );
    // The first one expires: the oldest kept is the next.
    assert_eq!(
        store
            .log_oldest_kept("/t/a", now_ms() + 120_000)
            .await
            .unwrap(),
        Some(2)
    );
    assert_eq!(
        store
            .log_first_since("/t/a", now_ms() + 1000)
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.log_first_since("/t/a", 0).await.unwrap(), Some(1));

    sub_rows(store, &["s1", "s2"]).await;
    raw(
        store,
        "INSERT INTO pubsub_cursor (sub_key, topic, acked_upto, updated_at) \
         VALUES ('s1', '/t/a', 3, 0), ('s2', '/t/a', 1, 0), ('orphan', '/t/a', 0, 0), \
         ('s1', '/t/b', 0, 0)",
    )
    .await;
    // The cursor of a deleted subscription (no pubsub_subs row) counts for nothing.
    assert_eq!(store.log_min_cursors().await.unwrap().get("/t/a"), Some(&1));

    let f = store.log_figures().await.unwrap();
    assert_eq!(f.current, 0);
    assert_eq!(f.parts.len(), 4);
    assert_eq!(f.parts[0].rows, 6);
    assert!(f.parts[0].bytes > 0, "{f:?}");
    assert_eq!(f.parts[1].rows, 0);

    assert_eq!(store.log_min_cursors().await.unwrap().get("/t/b"), Some(&0));
    let last_b = store.log_last_seq("/t/b").await.unwrap();
    assert!(last_b > 0);
    store.drop_topic_log("/t/b").await.unwrap();
    assert!(store.read_after("/t/b", 0, 10).await.unwrap().is_empty());
    // Its seq goes on: a topic made again under the name never reuses a seq.
    assert_eq!(store.log_last_seq("/t/b").await.unwrap(), last_b);
    // Its cursors went with it; the other topic's stayed.
    let mins = store.log_min_cursors().await.unwrap();
    assert_eq!((mins.get("/t/b"), mins.get("/t/a")), (None, Some(&1)));
}

both!(sqlite_append_and_read, pg_append_and_read, append_and_read);

/// Two flushers append to one topic at once while a reader reads it: the seqs are 1..=n
/// without gap or repeat, each flush's seqs are contiguous, and every read sees a prefix
/// of the log (seq order is commit order: nobody sees seq k before k-1 has committed).
async fn concurrent_flushes(store: &Store) {
    const FLUSHES: usize = 40;
    const PER: usize = 25;
    let topic = "/t/concurrent";
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (store, done) = (store.clone(), done.clone());
        tokio::spawn(async move {
            let mut reads = 0;
            let mut longest = 0;
            while !done.load(Ordering::SeqCst) {
                let seen = store.read_after(topic, 0, 100_000).await.unwrap();
                for (i, m) in seen.iter().enumerate() {
                    assert_eq!(m.seq, i as i64 + 1, "a read saw a gap: not a prefix");
                }
                assert!(seen.len() >= longest, "a read lost committed messages");
                longest = seen.len();
                reads += 1;
            }
            reads
        })
    };
    let flusher = |store: Store| async move {
        let mut ranges = Vec::new();
        for _ in 0..FLUSHES {
            let mut a = vec![TopicAppend {
                topic: topic.into(),
                refuse_past: None,
                known_floor: None,
                drop_unsubscribed: false,
                dropped: false,
                groups: vec![group(topic, PER)],
            }];
            let ok = store.append_log(&mut a, now_ms()).await.unwrap();
            assert_eq!(ok, vec![vec![true]]);
            let seqs: Vec<i64> = a[0].groups[0].iter().map(|m| m.seq).collect();
            for w in seqs.windows(2) {
                assert_eq!(w[1], w[0] + 1, "one flush's seqs are contiguous");
            }
            ranges.push((seqs[0], *seqs.last().unwrap()));
        }
        ranges
    };
    let (a, b) = tokio::join!(
        tokio::spawn(flusher(store.clone())),
        tokio::spawn(flusher(store.clone()))
    );
    done.store(true, Ordering::SeqCst);
    let reads = reader.await.unwrap();
    assert!(reads > 0);
    let mut ranges: Vec<(i64, i64)> = a.unwrap().into_iter().chain(b.unwrap()).collect();
    ranges.sort();
    let mut next = 1;
    for (lo, hi) in ranges {
        assert_eq!(lo, next, "seqs without gap or repeat");
        next = hi + 1;
    }
    let total = (2 * FLUSHES * PER) as i64;
    assert_eq!(next, total + 1);
    let all = store.read_after(topic, 0, 100_000).await.unwrap();
    assert_eq!(all.len() as i64, total);
    assert_eq!(store.log_last_seq(topic).await.unwrap(), total);
}

both!(
    sqlite_concurrent_flushes_keep_commit_order,
    pg_concurrent_flushes_keep_commit_order,
    concurrent_flushes
);

/// A refuse topic refuses a publish that would take it past its depth, whole; a smaller
/// one after it still fits. Depth counts from the slowest cursor, or, with none, the kept
/// (unexpired) messages.
async fn refuse_at_depth(store: &Store) {
    let topic = "/t/refuse";
    let append = |groups: Vec<Vec<Message>>| TopicAppend {
        topic: topic.into(),
        refuse_past: Some(5),
        known_floor: None,
        drop_unsubscribed: false,
        dropped: false,
        groups,
    };
    let mut a = vec![append(vec![
        group(topic, 3),
        group(topic, 3),
        group(topic, 2),
    ])];
    let ok = store.append_log(&mut a, now_ms()).await.unwrap();
    assert_eq!(ok, vec![vec![true, false, true]]);
    assert_eq!(
        a[0].groups[2].iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![4, 5]
    );
    assert!(a[0].groups[1].iter().all(|m| m.seq == 0), "refused: no seq");
    assert_eq!(store.read_after(topic, 0, 100).await.unwrap().len(), 5);
    // Full: one more is refused.
    let mut a = vec![append(vec![group(topic, 1)])];
    assert_eq!(
        store.append_log(&mut a, now_ms()).await.unwrap(),
        vec![vec![false]]
    );
    // A subscription that has finished 2 of them: room for 2. The cursor of a deleted
    // subscription (no pubsub_subs row) at 0 does not hold the floor.
    sub_rows(store, &["s1"]).await;
    raw(
        store,
        "INSERT INTO pubsub_cursor (sub_key, topic, acked_upto, updated_at) \
         VALUES ('orphan', '/t/refuse', 0, 0)",
    )
    .await;
    raw(
        store,
        "INSERT INTO pubsub_cursor (sub_key, topic, acked_upto, updated_at) \
         VALUES ('s1', '/t/refuse', 2, 0)",
    )
    .await;
    // The caller's old floor (0) says full: the store reads the floor again.
    let mut a = vec![append(vec![
        group(topic, 3),
        group(topic, 2),
        group(topic, 1),
    ])];
    a[0].known_floor = Some(0);
    let ok = store.append_log(&mut a, now_ms()).await.unwrap();
    assert_eq!(ok, vec![vec![false, true, false]]);
    assert_eq!(a[0].known_floor, Some(2), "the floor it read");
    assert_eq!(store.log_last_seq(topic).await.unwrap(), 7);
    // An overflow topic (no refuse_past) takes anything.
    let mut a = vec![TopicAppend {
        topic: topic.into(),
        refuse_past: None,
        known_floor: None,
        drop_unsubscribed: false,
        dropped: false,
        groups: vec![group(topic, 10)],
    }];
    assert_eq!(
        store.append_log(&mut a, now_ms()).await.unwrap(),
        vec![vec![true]]
    );
    assert_eq!(store.log_last_seq(topic).await.unwrap(), 17);
}

both!(sqlite_refuse_at_depth, pg_refuse_at_depth, refuse_at_depth);

/// `n` messages of `topic` whose every column differs from message to message (the optional
/// ones set), so that a column stored in another's place shows.
fn varied(topic: &str, n: usize) -> Vec<Message> {
    let now = now_ms();
    (0..n)
        .map(|i| {
            let mut m = msg(topic, i);
            m.pub_time_ms = now + i as i64;
            m.expires_at_ms = Some(now + 3_600_000 + i as i64);
            m.priority = (i % 10) as u8;
            m.mime_type = format!("application/x-{i}");
            m.correl_id = Some(format!("correl-{i}"));
            m.in_reply_to = Some(format!("reply-{i}"));
            m.ext_client_id = Some(format!("client-{i}"));
            m.published_by = format!("service:varied-{i}");
            m.data = Bytes::from(format!("varied {i}"));
            m
        })
        .collect()
}

/// A flush of one topic whose groups fit even under the caller's old floor (PostgreSQL: one
/// statement, no transaction) numbers its groups in order after the topic's last seq; one
/// that does not fit under the old floor is decided again on the floor read in the store.
async fn known_floor_flushes(store: &Store) {
    let topic = "/t/known-floor";
    let append = |known_floor: Option<i64>, groups: Vec<Vec<Message>>| {
        vec![TopicAppend {
            topic: topic.into(),
            refuse_past: Some(10),
            known_floor,
            drop_unsubscribed: false,
            dropped: false,
            groups,
        }]
    };
    let seqs = |a: &[TopicAppend], g: usize| -> Vec<i64> {
        a[0].groups[g].iter().map(|m| m.seq).collect()
    };
    // No floor known yet: the store reads it (nothing kept: 0).
    let mut a = append(None, vec![group(topic, 3)]);
    assert_eq!(
        store.append_log(&mut a, now_ms()).await.unwrap(),
        vec![vec![true]]
    );
    assert_eq!(a[0].known_floor, Some(0));
    // Fits under the old floor: 3 + 2 + 3 <= 10.
    let mut a = append(Some(0), vec![varied(topic, 2), varied(topic, 3)]);
    assert_eq!(
        store.append_log(&mut a, now_ms()).await.unwrap(),
        vec![vec![true, true]]
    );
    assert_eq!(seqs(&a, 0), vec![4, 5]);
    assert_eq!(seqs(&a, 1), vec![6, 7, 8]);
    let sent: Vec<Message> = a[0].groups.iter().flatten().cloned().collect();
    // 8 + 3 > 10 under the old floor; a subscription has finished 4 meanwhile, so the floor
    // read again leaves room: (8 - 4) + 3 <= 10.
    sub_rows(store, &["kf"]).await;
    raw(
        store,
        "INSERT INTO pubsub_cursor (sub_key, topic, acked_upto, updated_at) \
         VALUES ('kf', '/t/known-floor', 4, 0)",
    )
    .await;
    let mut a = append(Some(0), vec![group(topic, 3)]);
    assert_eq!(
        store.append_log(&mut a, now_ms()).await.unwrap(),
        vec![vec![true]]
    );
    assert_eq!(seqs(&a, 0), vec![9, 10, 11]);
    assert_eq!(a[0].known_floor, Some(4), "the floor it read");
    // Too many even under the real floor: refused, nothing written.
    let mut a = append(Some(4), vec![group(topic, 4)]);
    assert_eq!(
        store.append_log(&mut a, now_ms()).await.unwrap(),
        vec![vec![false]]
    );
    assert!(seqs(&a, 0).iter().all(|s| *s == 0));
    let all = store.read_after(topic, 0, 100).await.unwrap();
    assert_eq!(
        all.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=11).collect::<Vec<_>>()
    );
    assert_eq!(
        &all[3..8],
        &sent[..],
        "the one-statement flush stored what was sent, every column in its place"
    );
    assert_eq!(store.log_last_seq(topic).await.unwrap(), 11);
    // A first flush of a topic (no seq row yet) with a floor known: more than the depth
    // allows is refused per group, as always.
    let topic = "/t/first-flush";
    let mut a = vec![TopicAppend {
        topic: topic.into(),
        refuse_past: Some(10),
        known_floor: Some(0),
        drop_unsubscribed: false,
        dropped: false,
        groups: vec![group(topic, 6), group(topic, 6)],
    }];
    assert_eq!(
        store.append_log(&mut a, now_ms()).await.unwrap(),
        vec![vec![true, false]]
    );
    assert_eq!(store.log_last_seq(topic).await.unwrap(), 6);
    // PostgreSQL's one-statement path, asked directly: it appends what fits under the old
    // floor and writes nothing for what does not (the transaction's path decides that).
    let topic = "/t/one-statement";
    let mut first = vec![TopicAppend {
        topic: topic.into(),
        refuse_past: Some(10),
        known_floor: None,
        drop_unsubscribed: false,
        dropped: false,
        groups: vec![group(topic, 3)],
    }];
    store.append_log(&mut first, now_ms()).await.unwrap();
    let mut one = first.remove(0);
    one.known_floor = Some(0);
    one.groups = vec![group(topic, 2)];
    if let Some(fit) = store
        .append_log_one_statement_for_tests(&mut one)
        .await
        .unwrap()
    {
        assert!(fit);
        assert_eq!(
            one.groups[0].iter().map(|m| m.seq).collect::<Vec<_>>(),
            vec![4, 5]
        );
        one.groups = vec![group(topic, 6)];
        let fit = store
            .append_log_one_statement_for_tests(&mut one)
            .await
            .unwrap();
        assert_eq!(fit, Some(false), "5 + 6 > 10 under the old floor");
        assert!(one.groups[0].iter().all(|m| m.seq == 0));
        assert_eq!(store.log_last_seq(topic).await.unwrap(), 5);
        assert_eq!(store.read_after(topic, 0, 100).await.unwrap().len(), 5);
    }
}

both!(
    sqlite_known_floor_flushes,
    pg_known_floor_flushes,
    known_floor_flushes
);

/// Cleaning a partition keeps its live rows (PostgreSQL: moved into the current one) and removes the
/// dead: acked by every cursor, expired, or of a topic whose log was dropped.
async fn rotation_keeps_live_rows(store: &Store) {
    let now = now_ms();
    let mut expired = group("/r/exp", 2);
    for m in &mut expired {
        m.expires_at_ms = Some(now - 1);
    }
    let mut a = vec![
        TopicAppend {
            topic: "/r/acked".into(),
            refuse_past: None,
            known_floor: None,
            drop_unsubscribed: false,
            dropped: false,
            groups: vec![group("/r/acked", 5)],
        },
        TopicAppend {
            topic: "/r/kept".into(),
            refuse_past: None,
            known_floor: None,
            drop_unsubscribed: false,
            dropped: false,
            groups: vec![group("/r/kept", 3)],
        },
        TopicAppend {
            topic: "/r/exp".into(),
            refuse_past: None,
            known_floor: None,
            drop_unsubscribed: false,
            dropped: false,
            groups: vec![expired],
        },
        TopicAppend {
            topic: "/r/gone".into(),
            refuse_past: None,
            known_floor: None,
            drop_unsubscribed: false,
            dropped: false,
            groups: vec![group("/r/gone", 4)],
        },
    ];
    store.append_log(&mut a, now - 10).await.unwrap();
    // The slowest cursor of /r/acked is at 3: 4 and 5 are live. /r/kept has no cursor
    // (kept for its first subscription). /r/gone is a deleted topic (no pubsub_topics
    // row): its messages are dead. The cursor of a deleted subscription (no pubsub_subs
    // row) at 0 keeps nothing alive.
    sub_rows(store, &["s1", "s2"]).await;
    raw(
        store,
        "INSERT INTO pubsub_cursor (sub_key, topic, acked_upto, updated_at) \
         VALUES ('orphan', '/r/acked', 0, 0)",
    )
    .await;
    raw(
        store,
        "INSERT INTO pubsub_cursor (sub_key, topic, acked_upto, updated_at) \
         VALUES ('s1', '/r/acked', 5, 0), ('s2', '/r/acked', 3, 0)",
    )
    .await;
    // Defined topics (a row is live only while its topic is); /r/gone is not (deleted).
    raw(
        store,
        "INSERT INTO pubsub_topics (name, definition, updated_by, updated_at) VALUES \
         ('/r/acked', '{}', 't', 0), ('/r/kept', '{}', 't', 0), ('/r/exp', '{}', 't', 0)",
    )
    .await;

    // Part 0 is current: it cannot be cleaned.
    assert!(store.clean_log_part(0, 0, now).await.is_err());
    assert!(store.switch_log_part(0, now).await.unwrap());
    // A second rotator that still thinks 0 is current changes nothing.
    assert!(!store.switch_log_part(0, now).await.unwrap());
    // A stale idea of the current partition cleans nothing.
    assert!(store.clean_log_part(0, 2, now).await.is_err());
    // Published after the switch: into part 1.
    let mut b = vec![TopicAppend {
        topic: "/r/acked".into(),
        refuse_past: None,
        known_floor: None,
        drop_unsubscribed: false,
        dropped: false,
        groups: vec![group("/r/acked", 1)],
    }];
    store.append_log(&mut b, now).await.unwrap();

    let c = store.clean_log_part(0, 1, now).await.unwrap();
    assert!(c.bytes_before > 0);
    let f = store.log_figures().await.unwrap();
    assert_eq!(f.current, 1);
    assert!(f.rotated_at_ms >= now);
    match store {
        // PostgreSQL moves the live rows and empties the partition.
        Store::Postgres(_) => {
            assert_eq!((c.moved, c.removed), (5, 9), "{c:?}");
            assert_eq!((f.parts[0].rows, f.parts[1].rows), (0, 6), "{f:?}");
        }
        // SQLite deletes the dead rows and leaves the live ones where they are.
        Store::Sqlite(_) => {
            assert_eq!((c.moved, c.removed), (0, 9), "{c:?}");
            assert_eq!((f.parts[0].rows, f.parts[1].rows), (5, 1), "{f:?}");
        }
    }
    let seqs = |v: Vec<Message>| v.iter().map(|m| m.seq).collect::<Vec<_>>();
    assert_eq!(
        seqs(store.read_after("/r/acked", 0, 100).await.unwrap()),
        vec![4, 5, 6]
    );
    assert_eq!(
        seqs(store.read_after("/r/kept", 0, 100).await.unwrap()),
        vec![1, 2, 3]
    );
    assert!(store.read_after("/r/exp", 0, 100).await.unwrap().is_empty());
    assert!(
        store
            .read_after("/r/gone", 0, 100)
            .await
            .unwrap()
            .is_empty()
    );
    // Cleaning again finds nothing to do.
    let c = store.clean_log_part(0, 1, now).await.unwrap();
    assert_eq!((c.moved, c.removed), (0, 0));
}

both!(
    sqlite_rotation_keeps_live_rows,
    pg_rotation_keeps_live_rows,
    rotation_keeps_live_rows
);

async fn rotate_lease(store: &Store) {
    let now = now_ms();
    let ttl = Duration::from_secs(10);
    assert!(store.take_rotate_lease("a", now, ttl).await.unwrap());
    assert!(!store.take_rotate_lease("b", now + 1, ttl).await.unwrap());
    assert!(store.take_rotate_lease("a", now + 2, ttl).await.unwrap());
    // Expired: another server takes it.
    assert!(
        store
            .take_rotate_lease("b", now + 20_000, ttl)
            .await
            .unwrap()
    );
    store.release_rotate_lease("a").await.unwrap();
    assert!(
        !store
            .take_rotate_lease("a", now + 20_001, ttl)
            .await
            .unwrap()
    );
    store.release_rotate_lease("b").await.unwrap();
    assert!(
        store
            .take_rotate_lease("a", now + 20_002, ttl)
            .await
            .unwrap()
    );
}

both!(sqlite_rotate_lease, pg_rotate_lease, rotate_lease);

/// The garbage collection takes what deleted subscriptions and topics left: their cursors
/// (past the grace), expired leases, dead letters (once the cursors are gone); never a seq row
/// (a deleted topic's messages are dead and rotate away); and nothing of live ones.
async fn gc_takes_orphans(store: &Store) {
    let now = now_ms();
    for t in ["/g/live", "/g/gone"] {
        let mut a = vec![TopicAppend {
            topic: t.into(),
            refuse_past: None,
            known_floor: None,
            drop_unsubscribed: false,
            dropped: false,
            groups: vec![group(t, 2)],
        }];
        store.append_log(&mut a, now).await.unwrap();
    }
    raw(
        store,
        "INSERT INTO pubsub_topics (name, definition, updated_by, updated_at) \
         VALUES ('/g/live', '{}', 'test', 0)",
    )
    .await;
    sub_rows(store, &["live"]).await;
    let old = now - 120_000;
    raw(
        store,
        &format!(
            "INSERT INTO pubsub_cursor (sub_key, topic, acked_upto, updated_at) VALUES \
             ('live', '/g/live', 0, {old}), ('gone', '/g/live', 0, {old}), \
             ('fresh', '/g/live', 0, {now})"
        ),
    )
    .await;
    raw(
        store,
        &format!(
            "INSERT INTO pubsub_lease (sub_key, holder, expires_at) VALUES \
             ('live', 'x', {old}), ('gone', 'x', {old}), ('held', 'x', {}), \
             ('#other', 'x', {old})",
            now + 10_000
        ),
    )
    .await;
    for k in ["live", "gone", "nocursor"] {
        raw(
            store,
            &format!(
                "INSERT INTO pubsub_dead (sub_key, msg_id, topic, seq, pub_time, priority, \
                 mime_type, published_by, data, attempts, reason, dead_at) VALUES \
                 ('{k}', 'zpsm{k}', '/g/live', 1, 0, 5, 'text/plain', 'x', {}, 1, 'r', 0)",
                match store {
                    Store::Postgres(_) => "'\\x00'",
                    Store::Sqlite(_) => "x'00'",
                }
            ),
        )
        .await;
    }
    let g = store.log_gc(now, 60_000).await.unwrap();
    // Dead letters of 'gone' wait for its cursor to go (this sweep): the next sweep.
    assert_eq!((g.dead_letters, g.cursors, g.leases), (1, 1, 1), "{g:?}");
    let g = store.log_gc(now, 60_000).await.unwrap();
    assert_eq!((g.dead_letters, g.cursors, g.leases), (1, 0, 0), "{g:?}");
    let g = store.log_gc(now + 120_000, 60_000).await.unwrap();
    assert_eq!(
        (g.cursors, g.leases),
        (1, 1),
        "the fresh cursor past its grace: {g:?}"
    );
    let g = store.log_gc(now + 120_000, 60_000).await.unwrap();
    assert_eq!(g.dead_letters, 0, "{g:?}");
    // The live subscription's cursor and lease, the '#' lease, the live topic's log stay.
    assert_eq!(
        store.log_min_cursors().await.unwrap().get("/g/live"),
        Some(&0)
    );
    assert_eq!(store.log_last_seq("/g/live").await.unwrap(), 2);
    assert_eq!(store.log_last_seq("/g/gone").await.unwrap(), 2);
    let count = |sql: &'static str| async move {
        match store {
            Store::Sqlite(p) => sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(p)
                .await
                .unwrap(),
            Store::Postgres(p) => sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(p)
                .await
                .unwrap(),
        }
    };
    assert_eq!(
        count("SELECT count(*) FROM pubsub_dead WHERE sub_key = 'live'").await,
        1
    );
    assert_eq!(count("SELECT count(*) FROM pubsub_dead").await, 1);
    assert_eq!(
        count("SELECT count(*) FROM pubsub_lease WHERE sub_key IN ('live', '#other')").await,
        2
    );
    // The dropped topic's messages are dead: the rotation's cleaning removes them.
    assert!(store.switch_log_part(0, now).await.unwrap());
    let c = store.clean_log_part(0, 1, now).await.unwrap();
    assert_eq!(c.removed, 2, "{c:?}");
    assert!(store.read_after("/g/gone", 0, 10).await.unwrap().is_empty());
    assert_eq!(store.read_after("/g/live", 0, 10).await.unwrap().len(), 2);
}

both!(
    sqlite_gc_takes_orphans,
    pg_gc_takes_orphans,
    gc_takes_orphans
);

// ---- The publish path through the broker ----

/// A broker on `store` with these definitions (JSON topics, subscriptions, endpoints),
/// started; the sender stops it.
fn broker(
    store: &Store,
    topics: serde_json::Value,
    subs: serde_json::Value,
    endpoints: serde_json::Value,
) -> (Broker, tokio::sync::watch::Sender<bool>) {
    let metrics = Arc::new(Metrics::new(false));
    let key_path = std::env::temp_dir().join(format!(
        "oxbus-pubsub-key-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let key = Arc::new(oxbus_supervisor::secrets::Key::create(&key_path).unwrap());
    let _ = std::fs::remove_file(&key_path);
    let outgoing = Arc::new(oxbus_supervisor::outgoing::Outgoing::new(
        key,
        metrics.clone(),
    ));
    let b = Broker::new("test-server", store.clone(), metrics, outgoing);
    b.apply(&ObjectSet {
        pubsub_topics: serde_json::from_value(topics).unwrap(),
        pubsub_subs: serde_json::from_value(subs).unwrap(),
        pubsub_endpoints: serde_json::from_value(endpoints).unwrap(),
        ..ObjectSet::default()
    });
    let (tx, rx) = tokio::sync::watch::channel(false);
    b.start(rx);
    (b, tx)
}

fn new_msg(data: &str) -> NewMsg {
    NewMsg {
        data: Bytes::from(data.to_owned()),
        ..NewMsg::default()
    }
}

fn svc() -> Caller {
    Caller::Service("svc".into())
}

/// Every publish answered is in the store when its answer comes (many publishers at once,
/// so flushes group them); the messages carry what the publish and the topic said.
async fn publish_answers_after_commit(store: &Store) {
    let (b, stop) = broker(
        store,
        serde_json::json!([{"name": "/p/gd", "expiration_ms": 60000}]),
        serde_json::json!([]),
        serde_json::json!([]),
    );
    let ids = b
        .publish(&svc(), "/p/gd", vec![new_msg("one"), new_msg("two")])
        .await
        .unwrap();
    assert_eq!(ids.len(), 2);
    let stored = store.read_after("/p/gd", 0, 10).await.unwrap();
    assert_eq!(
        stored.iter().map(|m| m.msg_id.clone()).collect::<Vec<_>>(),
        ids
    );
    let m = &stored[0];
    assert_eq!((m.seq, m.priority, m.has_gd), (1, 5, true));
    assert_eq!(m.published_by, "service:svc");
    assert_eq!(m.mime_type, "text/plain");
    assert_eq!(m.expires_at_ms, Some(m.pub_time_ms + 60_000));
    assert_eq!(&m.data[..], b"one");

    let mut tasks = Vec::new();
    for t in 0..16 {
        let (b, store) = (b.clone(), store.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..8 {
                let mut one = new_msg(&format!("{t}-{i}"));
                one.priority = Some(9);
                one.correl_id = Some(format!("c{t}"));
                let ids = b.publish(&svc(), "/p/gd", vec![one]).await.unwrap();
                let seen: Vec<String> = store
                    .read_after("/p/gd", 0, 100_000)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|m| m.msg_id)
                    .collect();
                assert!(
                    seen.contains(&ids[0]),
                    "publish {t}-{i} was answered before its message was stored"
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let all = store.read_after("/p/gd", 0, 100_000).await.unwrap();
    assert_eq!(all.len(), 2 + 16 * 8);
    for (i, m) in all.iter().enumerate() {
        assert_eq!(m.seq, i as i64 + 1);
    }
    let stats = b.topic_stats().await.unwrap();
    assert_eq!(stats.len(), 1);
    assert_eq!(stats[0].last_seq, 130);
    assert_eq!(stats[0].published, 130);
    assert_eq!(stats[0].depth_gd, 130, "kept for the first subscription");
    assert!(stats[0].rate_1m > 0.0);
    stop.send(true).unwrap();
}

both!(
    sqlite_publish_answers_after_commit,
    pg_publish_answers_after_commit,
    publish_answers_after_commit
);

/// One publish of 1,000 messages: 1,000 msg_ids, stored with contiguous seqs in order.
async fn publish_a_batch_of_1000(store: &Store) {
    let (b, stop) = broker(
        store,
        serde_json::json!([{"name": "/p/batch"}]),
        serde_json::json!([]),
        serde_json::json!([]),
    );
    let msgs: Vec<NewMsg> = (0..1000).map(|i| new_msg(&format!("m{i}"))).collect();
    let ids = b.publish(&svc(), "/p/batch", msgs).await.unwrap();
    assert_eq!(ids.len(), 1000);
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), 1000);
    assert!(
        ids.iter()
            .all(|id| id.len() == 28 && id.starts_with("zpsm"))
    );
    let stored = store.read_after("/p/batch", 0, 5000).await.unwrap();
    assert_eq!(stored.len(), 1000);
    for (i, m) in stored.iter().enumerate() {
        assert_eq!(m.seq, i as i64 + 1);
        assert_eq!(m.msg_id, ids[i]);
        assert_eq!(m.data, Bytes::from(format!("m{i}")));
    }
    stop.send(true).unwrap();
}

both!(
    sqlite_publish_a_batch_of_1000,
    pg_publish_a_batch_of_1000,
    publish_a_batch_of_1000
);

/// What a publish is refused for: permissions (a REST caller needs an endpoint whose
/// `pub=` pattern matches), the topic, the message, the depth; and what on_no_subs drops.
async fn publish_refusals(store: &Store) {
    let (b, stop) = broker(
        store,
        serde_json::json!([
            {"name": "/p/x", "max_message_bytes": 10},
            {"name": "/q/x"},
            {"name": "/p/full", "max_depth_gd": 3},
            {"name": "/p/drop", "on_no_subs": "drop"},
            {"name": "/p/nongd", "has_gd": false}
        ]),
        serde_json::json!([]),
        serde_json::json!([
            {"name": "ep-pub", "security": "sec-pub", "topic_patterns": ["pub=/p/*"]},
            {"name": "ep-sub", "security": "sec-sub", "topic_patterns": ["sub=/p/*"]}
        ]),
    );
    let code = |r: Result<Vec<String>, PubsubError>| r.map(|_| "ok").unwrap_or_else(|e| e.code());
    let no_endpoint = Caller::Security("sec-none".into());
    let publisher = Caller::Security("sec-pub".into());
    let subscriber = Caller::Security("sec-sub".into());
    assert_eq!(
        code(b.publish(&no_endpoint, "/p/x", vec![new_msg("a")]).await),
        "forbidden"
    );
    assert_eq!(
        code(b.publish(&subscriber, "/p/x", vec![new_msg("a")]).await),
        "forbidden"
    );
    assert_eq!(
        code(b.publish(&publisher, "/q/x", vec![new_msg("a")]).await),
        "forbidden"
    );
    let e = b
        .publish(&no_endpoint, "/p/x", vec![new_msg("a")])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("/p/x"), "{e}");
    assert_eq!(
        code(b.publish(&publisher, "/p/x", vec![new_msg("a")]).await),
        "ok"
    );
    assert_eq!(
        store.read_after("/p/x", 0, 10).await.unwrap()[0].published_by,
        "endpoint:ep-pub"
    );
    assert_eq!(
        code(b.publish(&publisher, "/p/nope", vec![new_msg("a")]).await),
        "no_topic"
    );
    assert_eq!(
        code(
            b.publish(&svc(), "/p/x", vec![new_msg("01234567890")])
                .await
        ),
        "too_large"
    );
    let mut bad = new_msg("a");
    bad.priority = Some(0);
    assert_eq!(code(b.publish(&svc(), "/p/x", vec![bad]).await), "invalid");
    assert_eq!(code(b.publish(&svc(), "/p/x", vec![]).await), "invalid");
    // Nothing refused was stored.
    assert_eq!(store.read_after("/p/x", 0, 10).await.unwrap().len(), 1);

    // Depth 3, refuse: a publish that does not fit is refused whole.
    assert_eq!(
        code(
            b.publish(&svc(), "/p/full", vec![new_msg("1"), new_msg("2")])
                .await
        ),
        "ok"
    );
    assert_eq!(
        code(
            b.publish(&svc(), "/p/full", vec![new_msg("3"), new_msg("4")])
                .await
        ),
        "full"
    );
    assert_eq!(
        code(b.publish(&svc(), "/p/full", vec![new_msg("3")]).await),
        "ok"
    );
    assert_eq!(store.read_after("/p/full", 0, 10).await.unwrap().len(), 3);

    // No subscription and on_no_subs drop: accepted, not stored. Non-GD: not stored.
    assert_eq!(
        code(b.publish(&svc(), "/p/drop", vec![new_msg("d")]).await),
        "ok"
    );
    assert!(store.read_after("/p/drop", 0, 10).await.unwrap().is_empty());
    assert_eq!(
        code(b.publish(&svc(), "/p/nongd", vec![new_msg("n")]).await),
        "ok"
    );
    assert!(
        store
            .read_after("/p/nongd", 0, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // The same topic once a subscription made on another server (not in this server's
    // definitions yet) has its cursor: stored, never dropped once acknowledged.
    sub_rows(store, &["elsewhere"]).await;
    raw(
        store,
        "INSERT INTO pubsub_cursor (sub_key, topic, acked_upto, updated_at) \
         VALUES ('elsewhere', '/p/drop', 0, 0)",
    )
    .await;
    assert_eq!(
        code(b.publish(&svc(), "/p/drop", vec![new_msg("e")]).await),
        "ok"
    );
    assert_eq!(store.read_after("/p/drop", 0, 10).await.unwrap().len(), 1);

    // Metadata PostgreSQL could not store (NUL) or that is too long is refused.
    let mut m = new_msg("a");
    m.correl_id = Some("a\0b".into());
    let e = b.publish(&svc(), "/p/x", vec![m]).await.unwrap_err();
    assert!(e.to_string().contains("correl_id"), "{e}");
    for f in 0..4 {
        let mut m = new_msg("a");
        let bad = Some("x\ny".to_owned());
        match f {
            0 => m.correl_id = bad,
            1 => m.in_reply_to = bad,
            2 => m.ext_client_id = bad,
            _ => m.mime_type = bad,
        }
        assert_eq!(code(b.publish(&svc(), "/p/x", vec![m]).await), "invalid");
    }
    let mut m = new_msg("a");
    m.mime_type = Some("x".repeat(201));
    assert_eq!(code(b.publish(&svc(), "/p/x", vec![m]).await), "invalid");
    let mut m = new_msg("a");
    m.expiration_ms = Some(366 * 24 * 3600 * 1000);
    assert_eq!(code(b.publish(&svc(), "/p/x", vec![m]).await), "invalid");
    let mut m = new_msg("a");
    m.mime_type = Some("application/json; charset=utf-8".into());
    m.expiration_ms = Some(365 * 24 * 3600 * 1000);
    assert_eq!(code(b.publish(&svc(), "/p/x", vec![m]).await), "ok");

    let stats = b.topic_stats().await.unwrap();
    let of = |name: &str| stats.iter().find(|s| s.name == name).unwrap().clone();
    assert_eq!((of("/p/full").refused_full, of("/p/full").depth_gd), (2, 3));
    assert_eq!((of("/p/drop").dropped, of("/p/drop").published), (1, 2));
    assert_eq!(of("/p/nongd").dropped, 1);
    stop.send(true).unwrap();
}

both!(
    sqlite_publish_refusals,
    pg_publish_refusals,
    publish_refusals
);

/// The store fails: the publish is answered `unavailable` and nothing of it is stored; when
/// the store is back, publishing works again (PostgreSQL: the database refuses
/// connections for a while).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_store_down_is_unavailable() {
    let (store, engine) = Engine::postgres().await;
    let Engine::Postgres(db) = &engine else {
        unreachable!()
    };
    let (b, stop) = broker(
        &store,
        serde_json::json!([{"name": "/p/down"}]),
        serde_json::json!([]),
        serde_json::json!([]),
    );
    b.publish(&svc(), "/p/down", vec![new_msg("before")])
        .await
        .unwrap();
    let mut admin = sqlx::PgConnection::connect(&admin_url()).await.unwrap();
    let run = |sql: String| sqlx::query(sqlx::AssertSqlSafe(sql));
    run(format!("ALTER DATABASE {db} ALLOW_CONNECTIONS false"))
        .execute(&mut admin)
        .await
        .unwrap();
    run(format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'"
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    let e = b
        .publish(&svc(), "/p/down", vec![new_msg("during")])
        .await
        .unwrap_err();
    assert_eq!(e.code(), "unavailable", "{e}");
    // Failed before COMMIT: the publisher learns it was not stored, not the store's text.
    assert!(e.to_string().contains("not stored"), "{e}");
    assert!(!e.to_string().contains("config store: "), "{e}");
    run(format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true"))
        .execute(&mut admin)
        .await
        .unwrap();
    b.publish(&svc(), "/p/down", vec![new_msg("after")])
        .await
        .unwrap();
    let data: Vec<Bytes> = store
        .read_after("/p/down", 0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.data)
        .collect();
    assert_eq!(data, vec![Bytes::from("before"), Bytes::from("after")]);
    stop.send(true).unwrap();
    engine.cleanup(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_down_is_unavailable() {
    let (store, engine) = Engine::sqlite().await;
    let (b, stop) = broker(
        &store,
        serde_json::json!([{"name": "/p/down"}]),
        serde_json::json!([]),
        serde_json::json!([]),
    );
    store.close().await;
    let e = b
        .publish(&svc(), "/p/down", vec![new_msg("during")])
        .await
        .unwrap_err();
    assert_eq!(e.code(), "unavailable", "{e}");
    stop.send(true).unwrap();
    engine.cleanup(store).await;
}

/// At shutdown the flusher answers every publish it had queued: each publisher hears
/// either success (and its message is stored) or `unavailable` (and it is not).
async fn shutdown_answers_everything(store: &Store) {
    let (b, stop) = broker(
        store,
        serde_json::json!([{"name": "/p/stop"}]),
        serde_json::json!([]),
        serde_json::json!([]),
    );
    let mut tasks = Vec::new();
    for t in 0..32 {
        let b = b.clone();
        tasks.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for i in 0..20 {
                let r = b
                    .publish(&svc(), "/p/stop", vec![new_msg(&format!("{t}-{i}"))])
                    .await;
                outcomes.push(r);
            }
            outcomes
        }));
    }
    // Let some publishes through, then stop while others are queued.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while store.log_last_seq("/p/stop").await.unwrap() < 50 {
        assert!(
            std::time::Instant::now() < deadline,
            "no publish got through"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.send(true).unwrap();
    let mut ok = std::collections::HashSet::new();
    let mut refused = 0;
    for t in tasks {
        for r in t.await.unwrap() {
            match r {
                Ok(ids) => {
                    ok.insert(ids[0].clone());
                }
                Err(e) => {
                    assert_eq!(e.code(), "unavailable", "{e}");
                    refused += 1;
                }
            }
        }
    }
    assert_eq!(ok.len() + refused, 32 * 20);
    let stored: std::collections::HashSet<String> = store
        .read_after("/p/stop", 0, 100_000)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.msg_id)
        .collect();
    assert_eq!(
        stored, ok,
        "stored = acknowledged, nothing more, nothing less"
    );
}

both!(
    sqlite_shutdown_answers_everything,
    pg_shutdown_answers_everything,
    shutdown_answers_everything
);

/// The broker's rotator takes the `#rotate` lease and rotates a log that never rotated
/// (rotated_at 0) at once: the next partition is current, the kept messages still read.
async fn the_rotator_rotates(store: &Store) {
    let (b, stop) = broker(
        store,
        serde_json::json!([{"name": "/r/kept"}]),
        serde_json::json!([]),
        serde_json::json!([]),
    );
    b.publish(&svc(), "/r/kept", vec![new_msg("a"), new_msg("b")])
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let r = loop {
        if let Some(r) = b.last_rotation() {
            break r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no rotation within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((r.from, r.to, r.cleaned.part), (0, 1, 2), "{r:?}");
    let f = b.log_figures().await.unwrap();
    assert_eq!(f.current, 1);
    assert_eq!(store.read_after("/r/kept", 0, 10).await.unwrap().len(), 2);
    stop.send(true).unwrap();
    // At a clean stop the lease is handed back: another server takes it well before the
    // lease (10 s from its last renewal) would have run out.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !store
        .take_rotate_lease("other", now_ms(), Duration::from_secs(10))
        .await
        .unwrap()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the lease was not released"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

both!(
    sqlite_the_rotator_rotates,
    pg_the_rotator_rotates,
    the_rotator_rotates
);
