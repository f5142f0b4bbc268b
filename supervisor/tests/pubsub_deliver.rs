//! The store's side of pub/sub delivery (`store/pubsub_cursor.rs`), identically on SQLite
//! and PostgreSQL: where a new cursor starts, cursor writes fenced by the lease, leases
//! taken, renewed, refused and taken over, the backlog read, dead letters requeued and
//! forgotten. The delivery tasks themselves are tested in `pubsub/deliver/tests.rs`.
//!
//! PostgreSQL: a fresh database per test (OXBUS_TEST_PG, default
//! postgres://postgres@127.0.0.1:5432/test), dropped afterwards; a missing server fails.

use bytes::Bytes;
use oxbus_supervisor::model::pubsub::{DeliveryKind, Message, Retry, Subscription};
use oxbus_supervisor::store::{CursorRow, CursorStart, Store};
use sqlx::Connection;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

static N: AtomicU32 = AtomicU32::new(0);

fn unique(p: &str) -> String {
    format!(
        "{p}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

fn admin_url() -> String {
    std::env::var("OXBUS_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

async fn sqlite() -> Store {
    let dir = std::env::temp_dir().join(unique("oxbus-psd-test"));
    std::fs::create_dir_all(&dir).unwrap();
    Store::open(&format!("sqlite:{}", dir.join("oxbus.db").display()))
        .await
        .unwrap()
}

async fn postgres() -> (Store, String) {
    let db = unique("oxbus_psd_test");
    let mut admin = sqlx::PgConnection::connect(&admin_url())
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {} is needed for this test: {e}", admin_url()));
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(&mut admin)
        .await
        .unwrap();
    let base = admin_url();
    let url = format!("{}/{db}", &base[..base.rfind('/').unwrap()]);
    (Store::open(&url).await.unwrap(), db)
}

async fn drop_pg(store: Store, db: String) {
    store.close().await;
    let mut admin = sqlx::PgConnection::connect(&admin_url()).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
}

fn msg(topic: &str, data: &str, pub_time_ms: i64, expires_at_ms: Option<i64>) -> Message {
    Message {
        topic: topic.into(),
        seq: 0,
        msg_id: format!("zpsm{}", unique("m")),
        pub_time_ms,
        expires_at_ms,
        priority: 7,
        has_gd: true,
        mime_type: "application/json".into(),
        correl_id: Some("c1".into()),
        in_reply_to: None,
        ext_client_id: Some("x".into()),
        published_by: "service:t".into(),
        data: Bytes::from(data.to_owned()),
    }
}

fn sub(key: &str, topic: &str) -> Subscription {
    Subscription {
        sub_key: key.into(),
        topic: topic.into(),
        endpoint: None,
        delivery: DeliveryKind::Pull,
        batch_size: 1,
        retry: Retry::default(),
        dead_letter_topic: None,
        ack_timeout_ms: 30_000,
        created_at_ms: 1,
        created_by: None,
    }
}

/// Stores subscription `key`'s definition (no cursors).
async fn define(s: &Store, key: &str, topic: &str) {
    s.put_object(&sub(key, topic), true, "test").await.unwrap();
}

async fn cursors_start_where_they_should(s: &Store) {
    let t = "/orders/new";
    s.sub_append_for_tests(
        t,
        &[
            msg(t, "old-expired", 100, Some(150)),
            msg(t, "kept", 200, None),
            msg(t, "later", 1_000, None),
        ],
    )
    .await
    .unwrap();
    assert_eq!(s.sub_last_seq(t).await.unwrap(), 3);
    assert_eq!(s.sub_last_seq("/nothing").await.unwrap(), 0);
    for k in ["end", "kept", "since", "none"] {
        define(s, k, t).await;
    }
    assert_eq!(
        s.sub_cursor_create("end", t, CursorStart::End, 5)
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        s.sub_cursor_create("kept", t, CursorStart::OldestKept { now_ms: 500 }, 5)
            .await
            .unwrap(),
        1,
        "before the oldest unexpired message"
    );
    assert_eq!(
        s.sub_cursor_create("since", t, CursorStart::Since(900), 5)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        s.sub_cursor_create("none", t, CursorStart::Since(5_000), 5)
            .await
            .unwrap(),
        3,
        "nothing published since: at the end"
    );
    // An existing cursor stays where it is.
    assert_eq!(
        s.sub_cursor_create("kept", t, CursorStart::End, 6)
            .await
            .unwrap(),
        1
    );
    assert!(s.sub_topic_has_other_cursor(t, "end").await.unwrap());
    assert!(!s.sub_topic_has_other_cursor("/other", "end").await.unwrap());
    // The backlog after a cursor, all columns back.
    let page = s.sub_backlog(t, 1, 10).await.unwrap();
    assert_eq!(page.len(), 2);
    assert_eq!(page[0].seq, 2);
    assert_eq!(page[0].data, Bytes::from_static(b"kept"));
    assert_eq!(page[0].priority, 7);
    assert_eq!(page[0].correl_id.as_deref(), Some("c1"));
    assert_eq!(page[0].ext_client_id.as_deref(), Some("x"));
    assert!(page[0].has_gd);
    assert_eq!(s.sub_backlog(t, 1, 1).await.unwrap().len(), 1);
}

async fn leases_fence_cursor_writes(s: &Store) {
    let ttl = Duration::from_secs(10);
    assert!(s.sub_lease_take("sk1", "a", 1_000, ttl).await.unwrap());
    assert!(
        s.sub_lease_take("sk1", "a", 2_000, ttl).await.unwrap(),
        "renewed"
    );
    assert!(
        !s.sub_lease_take("sk1", "b", 3_000, ttl).await.unwrap(),
        "held by a"
    );
    define(s, "sk1", "/t").await;
    s.sub_cursor_create("sk1", "/t", CursorStart::End, 0)
        .await
        .unwrap();
    let row = |upto| CursorRow {
        topic: "/t".into(),
        acked_upto: upto,
        state: r#"{"done":[9]}"#.into(),
    };
    assert!(s.sub_cursors_save("sk1", "a", &[row(5)], 1).await.unwrap());
    assert!(
        !s.sub_cursors_save("sk1", "b", &[row(7)], 1).await.unwrap(),
        "b does not hold the lease: nothing written"
    );
    assert_eq!(s.sub_cursors("sk1").await.unwrap(), vec![row(5)]);
    assert!(
        !s.sub_cursors_save("sk1", "a", &[row(6)], 12_001)
            .await
            .unwrap(),
        "a's lease ran out (not renewed): nothing written, though nobody took it yet"
    );
    assert_eq!(s.sub_cursors("sk1").await.unwrap(), vec![row(5)]);
    // Expired: b takes it over, and a's writes stop counting.
    assert!(s.sub_lease_take("sk1", "b", 13_000, ttl).await.unwrap());
    assert!(!s.sub_cursors_save("sk1", "a", &[row(6)], 1).await.unwrap());
    let leases = s.sub_leases().await.unwrap();
    assert_eq!(leases, vec![("sk1".to_owned(), "b".to_owned(), 23_000)]);
    // Released only by its holder.
    s.sub_lease_release("sk1", "a").await.unwrap();
    assert_eq!(s.sub_leases().await.unwrap().len(), 1);
    s.sub_lease_release("sk1", "b").await.unwrap();
    assert!(s.sub_leases().await.unwrap().is_empty());
    assert!(s.sub_lease_take("sk1", "a", 14_000, ttl).await.unwrap());
}

async fn dead_letters_requeue_and_forget(s: &Store) {
    let t = "/d";
    define(s, "skd", t).await;
    let mut m1 = msg(t, "one", 1, None);
    m1.seq = 1;
    let mut m2 = msg(t, "\u{0}\u{ff}", 2, Some(99));
    m2.seq = 2;
    s.sub_dead_put("skd", &m1, 3, "boom", 10).await.unwrap();
    s.sub_dead_put("skd", &m2, 3, "bang", 11).await.unwrap();
    assert_eq!(s.sub_dead_count("skd").await.unwrap(), 2);
    let all = s.sub_dead("skd", None, 10).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].msg, m1, "oldest first, the message whole");
    assert_eq!(all[1].msg.expires_at_ms, Some(99));
    assert_eq!(all[0].reason, "boom");
    assert_eq!(all[0].attempts, 3);
    assert!(!all[0].requeued);
    assert_eq!(
        s.sub_dead_requeue("skd", Some(&[m2.msg_id.clone(), "nope".into()]))
            .await
            .unwrap(),
        1
    );
    let requeued = s.sub_dead("skd", Some(true), 10).await.unwrap();
    assert_eq!(requeued.len(), 1);
    assert_eq!(requeued[0].msg.msg_id, m2.msg_id);
    assert_eq!(requeued[0].attempts, 0);
    assert_eq!(s.sub_dead("skd", Some(false), 10).await.unwrap().len(), 1);
    // Dead again: back to not requeued, with the new reason.
    s.sub_dead_put("skd", &m2, 2, "again", 12).await.unwrap();
    let d = s.sub_dead("skd", Some(false), 10).await.unwrap();
    assert_eq!(d.len(), 2);
    assert_eq!(d[1].reason, "again");
    assert_eq!(s.sub_dead_requeue("skd", None).await.unwrap(), 2);
    s.sub_dead_delete("skd", &m1.msg_id).await.unwrap();
    assert_eq!(s.sub_dead_count("skd").await.unwrap(), 1);
    // Forget: cursors, lease and dead letters go.
    s.sub_cursor_create("skd", t, CursorStart::End, 0)
        .await
        .unwrap();
    s.sub_lease_take("skd", "a", 0, Duration::from_secs(1))
        .await
        .unwrap();
    s.sub_forget("skd").await.unwrap();
    assert!(s.sub_cursors("skd").await.unwrap().is_empty());
    assert_eq!(s.sub_dead_count("skd").await.unwrap(), 0);
    assert!(
        s.sub_leases()
            .await
            .unwrap()
            .iter()
            .all(|(k, _, _)| k != "skd")
    );
}

/// A subscription and its cursors are stored together, a sub_key taken fails the whole
/// create without touching the other subscription, and a delete takes everything along.
async fn subscriptions_come_and_go_whole(s: &Store) {
    let t = "/whole";
    s.sub_append_for_tests(t, &[msg(t, "kept", 10, None), msg(t, "two", 20, None)])
        .await
        .unwrap();
    let first = s
        .sub_create(&sub("w1", t), "test", &[(t.to_owned(), true)], 100)
        .await
        .unwrap();
    assert_eq!(first.value.sub_key, "w1");
    let c = s.sub_cursors("w1").await.unwrap();
    assert_eq!(c.len(), 1);
    assert_eq!(
        c[0].acked_upto, 0,
        "the topic's first subscription gets what was kept"
    );
    s.sub_create(&sub("w2", t), "test", &[(t.to_owned(), true)], 100)
        .await
        .unwrap();
    assert_eq!(
        s.sub_cursors("w2").await.unwrap()[0].acked_upto,
        2,
        "a later one starts at the end"
    );
    // w1 taken: refused, w1's rows untouched, nothing of the refused one stored.
    assert!(
        s.sub_dead_put("w1", &msg(t, "d", 1, None), 1, "x", 1)
            .await
            .is_ok()
    );
    let e = s
        .sub_create(
            &sub("w1", "/other"),
            "test",
            &[("/other".to_owned(), false)],
            100,
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("exists already"), "{e}");
    assert_eq!(s.sub_cursors("w1").await.unwrap(), c);
    assert_eq!(s.sub_dead_count("w1").await.unwrap(), 1);
    // Delete: the definition, cursors, lease and dead letters, at once.
    s.sub_lease_take("w1", "a", 0, Duration::from_secs(10))
        .await
        .unwrap();
    s.sub_delete("w1").await.unwrap();
    assert!(s.sub_cursors("w1").await.unwrap().is_empty());
    assert_eq!(s.sub_dead_count("w1").await.unwrap(), 0);
    assert!(
        s.sub_leases()
            .await
            .unwrap()
            .iter()
            .all(|(k, _, _)| k != "w1")
    );
    assert!(
        !s.objects::<Subscription>()
            .await
            .unwrap()
            .iter()
            .any(|x| x.sub_key == "w1")
    );
    assert!(s.sub_delete("w1").await.is_err(), "gone");
    // A task still stopping writes nothing back for it.
    assert!(
        s.sub_cursor_create("w1", t, CursorStart::End, 0)
            .await
            .is_err()
    );
    s.sub_dead_put("w1", &msg(t, "late", 1, None), 1, "x", 1)
        .await
        .unwrap();
    assert_eq!(s.sub_dead_count("w1").await.unwrap(), 0);
    assert!(s.sub_cursors("w1").await.unwrap().is_empty());
}

async fn all(s: &Store) {
    subscriptions_come_and_go_whole(s).await;
    cursors_start_where_they_should(s).await;
    leases_fence_cursor_writes(s).await;
    dead_letters_requeue_and_forget(s).await;
}

#[tokio::test]
async fn sqlite_delivery_tables() {
    all(&sqlite().await).await;
}

#[tokio::test]
async fn postgres_delivery_tables() {
    let (s, db) = postgres().await;
    all(&s).await;
    drop_pg(s, db).await;
}

/// Leases are renewed in one statement, only the holder's.
async fn leases_renew_in_one_statement(s: &Store) {
    let ttl = Duration::from_secs(10);
    assert!(s.sub_lease_take("r1", "a", 0, ttl).await.unwrap());
    assert!(s.sub_lease_take("r2", "a", 0, ttl).await.unwrap());
    assert!(s.sub_lease_take("r3", "b", 0, ttl).await.unwrap());
    let keys = ["r1", "r2", "r3", "r4"].map(String::from);
    let mut got = s.sub_leases_renew("a", &keys, 5_000, ttl).await.unwrap();
    got.sort();
    assert_eq!(got, ["r1", "r2"]);
    let leases = s.sub_leases().await.unwrap();
    assert!(leases.contains(&("r1".into(), "a".into(), 15_000)));
    assert!(
        leases.contains(&("r3".into(), "b".into(), 10_000)),
        "b's untouched"
    );
    assert!(
        s.sub_leases_renew("a", &[], 0, ttl)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn sqlite_leases_renew() {
    leases_renew_in_one_statement(&sqlite().await).await;
}

#[tokio::test]
async fn postgres_leases_renew() {
    let (s, db) = postgres().await;
    leases_renew_in_one_statement(&s).await;
    drop_pg(s, db).await;
}
