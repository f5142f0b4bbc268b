//! The config store's operations as `/metrics` shows them (`oxbus_store_*`, issue 18): every
//! file of the store is timed under its op (the tokens and the audit log included), a
//! failure counts whether it leaves an operation through `?` or as the operation's value,
//! and an operation its caller gave up on counts as cancelled, not as an error.
//!
//! SQLite only (the timing does not depend on the engine), and a binary of its own: the
//! store records into one handle per process (`store::record_into`), which no other test
//! may share.

use oxbus_supervisor::metrics::Metrics;
use oxbus_supervisor::model::channel::{Channel, ChannelType, DataFormat};
use oxbus_supervisor::store::{AuditQuery, Store, StoreError};
use sqlx::Connection;
use std::future::Future;
use std::sync::Arc;
use std::task::Poll;

/// The value of the sample `series` (name and labels as exposed); 0 when absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn store_operations_are_timed_failed_and_cancelled_by_op() {
    let metrics = Arc::new(Metrics::new(true));
    oxbus_supervisor::store::record_into(metrics.clone());
    let dir = std::env::temp_dir().join(format!("oxbus-store-metrics-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite:{}", dir.join("oxbus.db").display());
    let store = Store::open(&url).await.unwrap();
    let m = |series: &str| value(&metrics.render().unwrap(), series);

    // Every op is there from the start, the new ones included.
    let text = metrics.render().unwrap();
    for op in ["tokens", "audit"] {
        for series in [
            format!("oxbus_store_errors_total{{op=\"{op}\"}} 0"),
            format!("oxbus_store_cancelled_total{{op=\"{op}\"}} 0"),
        ] {
            assert!(text.contains(&format!("{series}\n")), "{series}:\n{text}");
        }
    }

    // The tokens and the audit log are timed.
    store.tokens().await.unwrap();
    store
        .audit_page(&AuditQuery {
            kind: None,
            name: None,
            who: None,
            since: None,
            before_id: None,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(m("oxbus_store_operation_seconds_count{op=\"tokens\"}"), 1.0);
    assert_eq!(m("oxbus_store_operation_seconds_count{op=\"audit\"}"), 1.0);

    // A row the store cannot read: `channels()` reads every row, then returns the error of
    // the one it cannot decode as its value. A store failure (Db), so an error.
    let ch = Channel {
        name: Some("orders".into()),
        url_path: "/orders".into(),
        methods: vec!["GET".into()],
        service: "orders.list".into(),
        data_format: DataFormat::Json,
        security: None,
        allow_from: vec![],
        rate_limit: None,
        channel_type: ChannelType::Rest,
        services: vec![],
        websocket: None,
        params_priority: None,
    };
    store.create_channel(&ch).await.unwrap();
    let errors = m("oxbus_store_errors_total{op=\"channels\"}");
    assert_eq!(errors, 0.0);
    let mut raw = sqlx::SqliteConnection::connect(&url).await.unwrap();
    // A BLOB stays a BLOB in a TEXT column, and is no `String` to the driver.
    sqlx::query("UPDATE channels SET methods = x'00ff' WHERE name = 'orders'")
        .execute(&mut raw)
        .await
        .unwrap();
    raw.close().await.unwrap();
    let read = store.channels().await;
    assert!(matches!(read, Err(StoreError::Db(_))), "{read:?}");
    assert_eq!(m("oxbus_store_errors_total{op=\"channels\"}"), 1.0);
    // A refusal the store answered with is no error.
    assert!(matches!(
        store.delete_channel("nothing-by-that-name").await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(m("oxbus_store_errors_total{op=\"channels\"}"), 1.0);

    // An operation dropped before the store answered (its first poll started it): cancelled,
    // neither an error nor a duration. Should the store ever answer within that first poll,
    // the operation simply ended and another one is dropped.
    let version = |s: &str| m(&format!("oxbus_store_{s}{{op=\"version\"}}"));
    let (errors, timed) = (version("errors_total"), version("operation_seconds_count"));
    let mut ended = 0.0;
    loop {
        let mut op = Box::pin(store.version());
        let first = std::future::poll_fn(|cx| Poll::Ready(op.as_mut().poll(cx))).await;
        if first.is_pending() {
            drop(op);
            break;
        }
        ended += 1.0;
        assert!(
            ended < 1000.0,
            "the store answered 1000 operations within their first poll: none could be dropped"
        );
    }
    assert_eq!(version("cancelled_total"), 1.0);
    assert_eq!(version("errors_total"), errors);
    assert_eq!(version("operation_seconds_count"), timed + ended);

    store.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}
