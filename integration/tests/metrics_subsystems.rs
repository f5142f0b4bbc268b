//! The metrics of the store, the cluster, deploys, caches and the scheduler against real
//! servers: each series moves as the test drives it (a deploy and a refused one, a rollback
//! and an undeploy, a cache hit, miss, set and eviction, a job's runs, a config change, the
//! bus links of a two-server cluster, the store going away), and the page passes
//! `promtool check metrics`.

use oxbus_integration::api::{admin, text};
use oxbus_integration::bus::linked;
use oxbus_integration::prom::{self, Page, scrape, scrape_until};
use oxbus_integration::*;
use serde_json::{Value, json};
use std::time::Duration;

/// `mt.cache`: one call on a named cache; `mt.tick` and `mt.slow` (2.5 s): jobs' services.
const SERVICE: &str = r#"from oxbus import Service


class CacheOp(Service):
    name = 'mt.cache'

    def handle(self):
        p = self.request.payload
        cache = self.cache[p['cache']]
        if p['op'] == 'set':
            cache.set(p['key'], p.get('value', 1))
            self.response.payload = {'ok': True}
        else:
            self.response.payload = {'value': cache.get(p['key'])}


class Tick(Service):
    name = 'mt.tick'

    def handle(self):
        self.response.payload = {'ok': True}


class Slow(Service):
    name = 'mt.slow'

    def handle(self):
        # Runs until the test releases it (a file it names), so the runs due meanwhile are
        # skipped; a run after the release ends at once.
        import os, time
        release, deadline = os.environ['OXBUS_TEST_RELEASE'], time.monotonic() + 60
        while not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.02)
"#;

fn env() -> Env {
    Env::new()
        .workers(1)
        .service("mt.py", SERVICE)
        .channel("/cache", &["POST"], "mt.cache")
}

async fn deploy(srv: &Server, name: &str, source: &str) -> Resp {
    let body = json!({"modules": [{"name": name, "source": source}]});
    admin(srv, "POST", "/v1/modules", body).await
}

async fn cache_call(srv: &Server, doc: Value) -> Value {
    let r = srv.post_json("/cache", &doc).await;
    assert_eq!(r.status, 200, "{doc}: {}", text(&r));
    r.json()
}

// -- one server: deploys, caches, the scheduler, the store's timing, the config version -----

#[tokio::test]
async fn deploys_caches_jobs_and_config_changes_move_their_series() {
    let release = std::env::temp_dir().join(format!(
        "oxbus-metrics-release-{}-{}",
        std::process::id(),
        next_id()
    ));
    let srv = env()
        .env("OXBUS_TEST_RELEASE", release.to_str().unwrap())
        .start()
        .await;
    let first = scrape(&srv).await;
    prom::check(&first.text);
    // One server on SQLite: no bus, so no link figures; the store answers.
    assert_eq!(first.get("oxbus_store_degraded", &[]), Some(0.0));
    assert_eq!(first.get("oxbus_cluster_bus_links_up", &[]), None);

    // Deploys: one that works, one the check refuses; a rollback and an undeploy.
    let d = |p: &Page, action: &str, outcome: &str| {
        p.get_or_zero(
            "oxbus_deploys_total",
            &[("action", action), ("outcome", outcome)],
        )
    };
    let good = "from oxbus import Service\n\nclass A(Service):\n    name = 'mt.a'\n\n    def handle(self):\n        self.response.payload = {'v': 1}\n";
    let r = deploy(&srv, "mtmod", good).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let r = deploy(&srv, "mtmod", "def broken(:\n").await;
    assert_eq!(r.status, 422, "{}", text(&r));
    let r = deploy(&srv, "mtmod", &good.replace("'v': 1", "'v': 2")).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let r = admin(&srv, "POST", "/v1/modules/mtmod/rollback", Value::Null).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let r = admin(&srv, "DELETE", "/v1/modules/mtmod", Value::Null).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let r = admin(&srv, "DELETE", "/v1/modules/mtmod", Value::Null).await;
    assert_eq!(r.status, 404, "{}", text(&r));
    let p = scrape(&srv).await;
    assert_eq!(d(&p, "deploy", "ok") - d(&first, "deploy", "ok"), 2.0);
    assert_eq!(
        d(&p, "deploy", "refused") - d(&first, "deploy", "refused"),
        1.0
    );
    assert_eq!(d(&p, "rollback", "ok") - d(&first, "rollback", "ok"), 1.0);
    assert_eq!(d(&p, "undeploy", "ok") - d(&first, "undeploy", "ok"), 1.0);
    assert_eq!(
        d(&p, "undeploy", "invalid") - d(&first, "undeploy", "invalid"),
        1.0
    );
    let count = |p: &Page, action: &str| {
        p.get_or_zero("oxbus_deploy_duration_seconds_count", &[("action", action)])
    };
    assert_eq!(count(&p, "deploy") - count(&first, "deploy"), 3.0);
    assert_eq!(count(&p, "undeploy") - count(&first, "undeploy"), 2.0);

    // A config change (a small cache's definition): the applied version follows the
    // store's, and the store timed the change under its group of tables.
    let before = p.get_or_zero("oxbus_store_operation_seconds_count", &[("op", "objects")]);
    let r = admin(&srv, "PUT", "/v1/caches/tiny", json!({"max_entries": 2})).await;
    assert_eq!(r.status, 201, "{}", text(&r));
    let version = api::config_version(&srv).await as f64;
    let p = scrape_until(&srv, "the applied version is the store's", |p| {
        p.get("oxbus_cluster_config_version_applied", &[]) == Some(version)
    })
    .await;
    assert!(p.get_or_zero("oxbus_store_operation_seconds_count", &[("op", "objects")]) > before);
    assert!(
        p.get("oxbus_cluster_config_version_applied", &[])
            > first.get("oxbus_cluster_config_version_applied", &[])
    );
    assert_eq!(p.sum("oxbus_store_errors_total", &[]), 0.0);

    // Caches: a set, a hit, a miss; then more keys than it holds: evictions.
    let tiny = [("cache", "tiny")];
    assert_eq!(p.get("oxbus_cache_entries", &tiny), Some(0.0));
    cache_call(&srv, json!({"cache": "tiny", "op": "set", "key": "k"})).await;
    assert_eq!(
        cache_call(&srv, json!({"cache": "tiny", "op": "get", "key": "k"})).await["value"],
        1
    );
    assert_eq!(
        cache_call(&srv, json!({"cache": "tiny", "op": "get", "key": "nope"})).await["value"],
        Value::Null
    );
    let p = scrape(&srv).await;
    assert_eq!(p.get("oxbus_cache_sets_total", &tiny), Some(1.0));
    assert_eq!(p.get("oxbus_cache_hits_total", &tiny), Some(1.0));
    assert_eq!(p.get("oxbus_cache_misses_total", &tiny), Some(1.0));
    assert_eq!(p.get("oxbus_cache_entries", &tiny), Some(1.0));
    assert_eq!(p.get("oxbus_cache_evictions_total", &tiny), Some(0.0));
    // The default cache is there too, untouched.
    assert_eq!(
        p.get("oxbus_cache_sets_total", &[("cache", "default")]),
        Some(0.0)
    );
    for i in 0..20 {
        cache_call(
            &srv,
            json!({"cache": "tiny", "op": "set", "key": format!("e{i}")}),
        )
        .await;
    }
    let p = scrape(&srv).await;
    assert_eq!(p.get("oxbus_cache_sets_total", &tiny), Some(21.0));
    assert!(
        p.get_or_zero("oxbus_cache_evictions_total", &tiny) > 0.0,
        "{}",
        p.text
    );
    assert!(
        p.get_or_zero("oxbus_cache_entries", &tiny) <= 2.0,
        "{}",
        p.text
    );
    // Deleted: its series go; created again: from 0.
    let r = admin(&srv, "DELETE", "/v1/caches/tiny", Value::Null).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let p = scrape_until(&srv, "the deleted cache's series gone", |p| {
        p.get("oxbus_cache_sets_total", &tiny).is_none()
    })
    .await;
    assert!(p.get("oxbus_cache_entries", &tiny).is_none());
    let r = admin(&srv, "PUT", "/v1/caches/tiny", json!({"max_entries": 2})).await;
    assert_eq!(r.status, 201, "{}", text(&r));
    let p = scrape_until(&srv, "the cache created again", |p| {
        p.get("oxbus_cache_sets_total", &tiny).is_some()
    })
    .await;
    assert_eq!(p.get("oxbus_cache_evictions_total", &tiny), Some(0.0));

    // The scheduler: the only server leads; a 1 s job runs, each run counted and timed.
    let p = scrape_until(&srv, "this server leads", |p| {
        p.get("oxbus_scheduler_leader", &[]) == Some(1.0)
    })
    .await;
    assert_eq!(
        p.get(
            "oxbus_scheduler_runs_total",
            &[("job_name", "beat"), ("outcome", "ok")]
        ),
        None
    );
    let r = admin(
        &srv,
        "PUT",
        "/v1/jobs/beat",
        json!({"type": "interval_based", "service": "mt.tick", "seconds": 1}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", text(&r));
    let p = scrape_until(&srv, "two runs of the job", |p| {
        p.get_or_zero(
            "oxbus_scheduler_runs_total",
            &[("job_name", "beat"), ("outcome", "ok")],
        ) >= 2.0
    })
    .await;
    assert!(p.get_or_zero("oxbus_scheduler_lateness_seconds_count", &[]) >= 2.0);
    // A job whose service does not exist: its runs are errors.
    let r = admin(
        &srv,
        "PUT",
        "/v1/jobs/lost",
        json!({"type": "interval_based", "service": "mt.nowhere", "seconds": 1}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", text(&r));
    scrape_until(&srv, "a failed run", |p| {
        p.get_or_zero(
            "oxbus_scheduler_runs_total",
            &[("job_name", "lost"), ("outcome", "error")],
        ) >= 1.0
    })
    .await;
    // A 1 s job whose run lasts until the test releases it: the runs due meanwhile are
    // skipped (overlap: skip).
    let r = admin(
        &srv,
        "PUT",
        "/v1/jobs/slow",
        json!({"type": "interval_based", "service": "mt.slow", "seconds": 1}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", text(&r));
    let p = scrape_until(&srv, "a skipped run", |p| {
        p.get_or_zero(
            "oxbus_scheduler_runs_total",
            &[("job_name", "slow"), ("outcome", "skipped")],
        ) >= 1.0
    })
    .await;
    std::fs::write(&release, b"").unwrap();
    prom::check(&p.text);
    srv.assert_no_errors(&[]);
    drop(srv);
    let _ = std::fs::remove_file(&release);
}

// -- two servers: the bus links and what each peer announced ---------------------------------

#[tokio::test]
async fn a_two_server_cluster_shows_its_links_and_each_peers_version() {
    let db = PgDatabase::create();
    let url = format!("{:?}", db.url);
    let secret = cluster_secret("metrics");
    let a = env().bus_member(&url, "a", &secret).start().await;
    let b = env().bus_member(&url, "b", &secret).start().await;
    linked(&a, &["b"]).await;
    linked(&b, &["a"]).await;
    for (srv, peer) in [(&a, "b"), (&b, "a")] {
        // Up, and traffic on it both ways (each end sends its version, then heartbeats).
        let p = scrape_until(srv, "one link up, with frames both ways", |p| {
            p.get("oxbus_cluster_bus_links_up", &[]) == Some(1.0)
                && ["in", "out"].iter().all(|d| {
                    p.get_or_zero("oxbus_cluster_bus_frames_total", &[("direction", d)]) > 0.0
                        && p.get_or_zero("oxbus_cluster_bus_bytes_total", &[("direction", d)]) > 0.0
                })
        })
        .await;
        prom::check(&p.text);
        assert!(
            p.get("oxbus_cluster_peer_config_version", &[("peer", peer)])
                .is_some(),
            "{}",
            p.text
        );
    }
    // A change through A: B applies it and announces it; A sees B level with itself.
    let r = admin(&a, "PUT", "/v1/caches/orders", json!({"max_entries": 10})).await;
    assert_eq!(r.status, 201, "{}", text(&r));
    let version = api::config_version(&a).await as f64;
    scrape_until(&b, "B applied the change", |p| {
        p.get("oxbus_cluster_config_version_applied", &[]) == Some(version)
    })
    .await;
    let p = scrape_until(&a, "B announced the change to A", |p| {
        p.get("oxbus_cluster_peer_config_version", &[("peer", "b")]) == Some(version)
    })
    .await;
    assert_eq!(
        p.get("oxbus_cluster_peer_lag_versions", &[("peer", "b")]),
        Some(0.0)
    );
    // B stops: A's link goes, and so does B's series.
    let mut b = b;
    b.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(b.wait_exit(Duration::from_secs(30)), Some(0));
    let p = scrape_until(&a, "no link up", |p| {
        p.get("oxbus_cluster_bus_links_up", &[]) == Some(0.0)
    })
    .await;
    assert!(
        p.get("oxbus_cluster_peer_config_version", &[("peer", "b")])
            .is_none()
    );
    a.assert_no_errors(&[]);
}

// -- the store goes away and comes back --------------------------------------------------------

#[tokio::test]
async fn the_store_going_away_shows_as_degraded_and_errors() {
    let pg = PrivatePg::start();
    let url = format!("{:?}", pg.url());
    let srv = env().set("store", "url", &url).start().await;
    let p = scrape(&srv).await;
    assert_eq!(p.get("oxbus_store_degraded", &[]), Some(0.0));
    let errors = p.sum("oxbus_store_errors_total", &[]);
    pg.stop();
    let p = scrape_until(&srv, "store degraded", |p| {
        p.get("oxbus_store_degraded", &[]) == Some(1.0)
    })
    .await;
    assert!(
        p.sum("oxbus_store_errors_total", &[]) > errors,
        "{}",
        p.text
    );
    prom::check(&p.text);
    pg.start_again();
    scrape_until(&srv, "store back", |p| {
        p.get("oxbus_store_degraded", &[]) == Some(0.0)
    })
    .await;
}
