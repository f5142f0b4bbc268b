//! Cluster membership (issue 4, first part): servers register in the config store; a SQLite
//! store takes one server, a PostgreSQL store at most three.

use oxbus_integration::*;
use std::time::Duration;

fn env() -> Env {
    Env::new().workers(1).with_test_services()
}

#[tokio::test]
async fn a_second_server_on_a_sqlite_store_is_refused() {
    let a = env().start().await;
    let info = a
        .admin("GET", "/v1/info", Some(&a.admin_token()), b"")
        .await
        .json();
    assert_eq!(info["servers"].as_array().unwrap().len(), 1);
    assert_eq!(info["servers"][0]["name"], info["server"]);
    let url = format!("\"sqlite:{}\"", a.dir.join("oxbus.db").display());
    let mut b = env().set("store", "url", &url).spawn();
    assert_eq!(b.wait_exit(Duration::from_secs(30)), Some(1));
    assert!(
        b.log()
            .contains("a cluster of servers needs a PostgreSQL store"),
        "{}",
        b.log()
    );
    // A stops cleanly: its row goes, and another server may take the store.
    let a = a.restart().await;
    let info = a
        .admin("GET", "/v1/info", Some(&a.admin_token()), b"")
        .await
        .json();
    assert_eq!(info["servers"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_fourth_server_on_a_postgres_store_is_refused() {
    let (first, db) = env().postgres_store();
    let url = format!("{:?}", db.url);
    let mut servers = vec![first.start().await];
    for _ in 0..2 {
        servers.push(env().set("store", "url", &url).start().await);
    }
    let info = servers[2]
        .admin("GET", "/v1/info", Some(&servers[2].admin_token()), b"")
        .await
        .json();
    assert_eq!(info["servers"].as_array().unwrap().len(), 3);
    let mut fourth = env().set("store", "url", &url).spawn();
    assert_eq!(fourth.wait_exit(Duration::from_secs(30)), Some(1));
    assert!(
        fourth.log().contains("a cluster has at most 3 servers"),
        "{}",
        fourth.log()
    );
    // One stops cleanly: now there is room.
    let mut gone = servers.pop().unwrap();
    gone.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(gone.wait_exit(Duration::from_secs(30)), Some(0));
    let again = env().set("store", "url", &url).start().await;
    again.assert_no_errors(&[]);
}
