//! The config store's behaviour, run identically on SQLite and on PostgreSQL.
//!
//! PostgreSQL: a fresh database per test on the machine's server (OXBUS_TEST_PG, default
//! postgres://postgres@127.0.0.1:5432/test), dropped afterwards. A missing server fails the
//! test loudly; it never skips.
//!
//! Over ~800 lines on purpose: each suite runs on both engines through one `Engine` fixture;
//! a split by table group would repeat that fixture in every new test binary.

use oxbus_supervisor::model::channel::{Channel, ChannelType, DataFormat};
use oxbus_supervisor::store::{ObjectChanges, Store, StoreError, source_hash};
use sqlx::Connection;
use std::sync::atomic::{AtomicU32, Ordering};

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
            "oxbus-store-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite:{}", dir.join("oxbus.db").display());
        (Store::open(&url).await.unwrap(), Engine::Sqlite(dir))
    }

    async fn postgres() -> (Store, Engine) {
        let db = format!(
            "oxbus_store_test_{}_{}",
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
        let base = admin_url();
        let url = format!("{}/{db}", &base[..base.rfind('/').unwrap()]);
        (Store::open(&url).await.unwrap(), Engine::Postgres(db))
    }

    async fn cleanup(self, store: Store) {
        store.close().await;
        match self {
            Engine::Sqlite(dir) => std::fs::remove_dir_all(dir).unwrap(),
            Engine::Postgres(db) => {
                let mut admin = sqlx::PgConnection::connect(&admin_url()).await.unwrap();
                sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {db}")))
                    .execute(&mut admin)
                    .await
                    .unwrap();
            }
        }
    }
}

async fn modules_deploy_rollback_undeploy(store: &Store) {
    assert_eq!(store.version().await.unwrap(), 0);
    let a1 = store
        .deploy_module("crm.customers", "V = 1\n", "alice")
        .await
        .unwrap();
    assert_eq!(a1.config_version, 1);
    assert_eq!(a1.value.version, 1);
    assert_eq!(a1.value.source_hash, source_hash("V = 1\n"));
    let a2 = store
        .deploy_module("crm.customers", "V = 2\n", "bob")
        .await
        .unwrap();
    assert_eq!((a2.config_version, a2.value.version), (2, 2));
    store
        .deploy_module("billing", "X = 1\n", "bob")
        .await
        .unwrap();

    let active = store.active_modules().await.unwrap();
    assert_eq!(
        active
            .iter()
            .map(|m| (m.name.as_str(), m.version))
            .collect::<Vec<_>>(),
        vec![("billing", 1), ("crm.customers", 2)]
    );
    assert_eq!(active[1].source, "V = 2\n");
    assert_eq!(active[1].deployed_by, "bob");

    let rb = store.rollback_module("crm.customers").await.unwrap();
    assert_eq!(rb.value.version, 1);
    assert_eq!(rb.config_version, 4);
    let active = store.active_modules().await.unwrap();
    assert_eq!(
        active
            .iter()
            .find(|m| m.name == "crm.customers")
            .unwrap()
            .source,
        "V = 1\n"
    );
    // Nothing earlier than version 1: a clear refusal, and no version bump.
    assert!(matches!(
        store.rollback_module("crm.customers").await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(store.version().await.unwrap(), 4);

    let history = store.module_history("crm.customers").await.unwrap();
    assert_eq!(
        history
            .iter()
            .map(|m| (m.version, m.active))
            .collect::<Vec<_>>(),
        vec![(2, false), (1, true)]
    );

    store.undeploy_module("billing").await.unwrap();
    assert!(matches!(
        store.undeploy_module("billing").await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.active_modules().await.unwrap().len(), 1);
    // A redeploy after undeploy continues the version sequence.
    assert_eq!(
        store
            .deploy_module("billing", "X = 2\n", "c")
            .await
            .unwrap()
            .value
            .version,
        2
    );

    assert!(matches!(
        store.deploy_module("bad name", "", "x").await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store.deploy_module("1abc", "", "x").await,
        Err(StoreError::Invalid(_))
    ));
}

/// Many modules in one deploy (more than one batch of statements), a pending deploy that is
/// dropped (rolled back), and one that commits.
async fn batched_and_pending_deploys(store: &Store) {
    let many: Vec<(String, String)> = (0..1203)
        .map(|i| (format!("m{i:04}"), format!("V = {i}\n")))
        .collect();
    let first = store.deploy_modules(&many, "bulk").await.unwrap();
    assert_eq!(first.config_version, 1);
    assert_eq!(first.value.len(), 1203);
    assert!(first.value.iter().all(|m| m.version == 1 && m.active));
    assert_eq!(first.value[7].name, "m0007");
    assert_eq!(first.value[7].source_hash, source_hash("V = 7\n"));
    // A second deploy of some of them: next versions for those, the rest untouched.
    let some: Vec<(String, String)> = many
        .iter()
        .step_by(2)
        .map(|(n, s)| (n.clone(), format!("{s}W = 2\n")))
        .collect();
    let second = store.deploy_modules(&some, "bulk").await.unwrap();
    assert_eq!(second.config_version, 2);
    assert!(second.value.iter().all(|m| m.version == 2));
    let active = store.active_modules().await.unwrap();
    assert_eq!(active.len(), 1203);
    assert_eq!(active.iter().filter(|m| m.version == 2).count(), some.len());
    assert_eq!(store.module_history("m0002").await.unwrap().len(), 2);

    // Written but dropped: nothing of it is visible, before or after.
    let pending = store
        .begin_deploy(&[("m0002".into(), "V = 'never'\n".into())], "x")
        .await
        .unwrap();
    assert_eq!(pending.modules()[0].version, 3);
    drop(pending);
    assert_eq!(store.version().await.unwrap(), 2);
    let m2 = store.module_history("m0002").await.unwrap();
    assert_eq!((m2.len(), m2[0].version, m2[0].active), (2, 2, true));

    let pending = store
        .begin_deploy(&[("m0002".into(), "V = 'no'\n".into())], "x")
        .await
        .unwrap();
    pending.rollback().await.unwrap();
    assert_eq!(store.version().await.unwrap(), 2);

    let pending = store
        .begin_deploy(&[("m0002".into(), "V = 3\n".into())], "x")
        .await
        .unwrap();
    let third = pending.commit().await.unwrap();
    assert_eq!((third.config_version, third.value[0].version), (3, 3));
    assert_eq!(
        store.module_history("m0002").await.unwrap()[0].source,
        "V = 3\n"
    );

    let twice = [
        ("a".to_owned(), String::new()),
        ("a".to_owned(), String::new()),
    ];
    assert!(matches!(
        store.begin_deploy(&twice, "x").await,
        Err(StoreError::Invalid(m)) if m.contains("listed twice")
    ));
    assert_eq!(store.version().await.unwrap(), 3);

    // Origins (schema 22), in a batch of more than one statement: stored with each version,
    // read back by every read, none for a module not listed.
    let origins: Vec<(String, String)> = many
        .iter()
        .step_by(3)
        .map(|(n, _)| (n.clone(), format!("/srv/app/{n}.py")))
        .collect();
    let fourth = store
        .begin_deploy_from(&many, &origins, "bulk")
        .await
        .unwrap()
        .commit()
        .await
        .unwrap();
    assert_eq!(fourth.value[3].origin.as_deref(), Some("/srv/app/m0003.py"));
    assert_eq!(fourth.value[4].origin, None);
    let active = store.active_modules().await.unwrap();
    let by_name = |n: &str| active.iter().find(|m| m.name == n).unwrap().clone();
    assert_eq!(
        by_name("m1200").origin.as_deref(),
        Some("/srv/app/m1200.py")
    );
    assert_eq!(by_name("m1201").origin, None);
    let history = store.module_history("m0003").await.unwrap();
    assert_eq!(history[0].origin.as_deref(), Some("/srv/app/m0003.py"));
    assert_eq!(
        history[1].origin, None,
        "an earlier version keeps its own (none)"
    );
}

async fn channels_crud(store: &Store) {
    let before = store.version().await.unwrap();
    let ch = Channel {
        name: None,
        url_path: "/customers/{id}".into(),
        methods: vec!["GET".into()],
        service: "crm.customer.get".into(),
        data_format: DataFormat::Json,
        security: None,
        allow_from: vec![],
        rate_limit: None,
        channel_type: ChannelType::Rest,
        services: vec![],
        websocket: None,
        params_priority: None,
    };
    let c = store.create_channel(&ch).await.unwrap();
    assert_eq!(c.value.name.as_deref(), Some("/customers/{id}"));
    assert_eq!(c.config_version, before + 1);
    // Same name again, and an ambiguous route, are refused without a version bump.
    assert!(matches!(
        store.create_channel(&ch).await,
        Err(StoreError::Invalid(_))
    ));
    let clash = Channel {
        name: Some("other".into()),
        ..ch.clone()
    };
    assert!(matches!(
        store.create_channel(&clash).await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(store.version().await.unwrap(), before + 1);

    let raw = Channel {
        name: Some("upload".into()),
        url_path: "/upload".into(),
        methods: vec![],
        service: "files.put".into(),
        data_format: DataFormat::Raw,
        security: Some("uploaders".into()),
        allow_from: vec!["10.0.0.0/8".into(), "2001:db8::/32".into()],
        rate_limit: Some(oxbus_supervisor::model::channel::RateLimit {
            requests: 10,
            per_s: 60,
            burst: Some(3),
        }),
        channel_type: ChannelType::Rest,
        services: vec![],
        websocket: None,
        params_priority: None,
    };
    store.create_channel(&raw).await.unwrap();
    let all = store.channels().await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[1], raw);

    // A JSON-RPC channel keeps its type and its services allow list; its service is empty.
    let rpc = Channel {
        name: Some("rpc".into()),
        url_path: "/rpc".into(),
        methods: vec![],
        service: String::new(),
        data_format: DataFormat::Json,
        channel_type: ChannelType::JsonRpc,
        services: vec!["crm.customer.get".into(), "crm.customer.list".into()],
        websocket: None,
        params_priority: None,
        security: Some("partners".into()),
        allow_from: vec![],
        rate_limit: None,
    };
    store.create_channel(&rpc).await.unwrap();
    assert_eq!(store.channels().await.unwrap()[2], rpc);
    let plan = oxbus_supervisor::store::Plan {
        put_channels: vec![Channel {
            services: vec![],
            websocket: None,
            params_priority: None,
            ..rpc.clone()
        }],
        ..Default::default()
    };
    store.apply(&plan, "t").await.unwrap();
    assert!(store.channels().await.unwrap()[2].services.is_empty());
    store.delete_channel("rpc").await.unwrap();

    store.delete_channel("upload").await.unwrap();
    assert!(matches!(
        store.delete_channel("upload").await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.channels().await.unwrap().len(), 1);
    assert_eq!(store.version().await.unwrap(), before + 6);
}

async fn reopen_keeps_everything(url_of: impl Fn() -> String, store: Store) {
    store.deploy_module("keep", "K = 1\n", "x").await.unwrap();
    let v = store.version().await.unwrap();
    store.close().await;
    // Opening again runs the migrations again: a no-op on a current schema.
    let again = Store::open(&url_of()).await.unwrap();
    assert_eq!(again.version().await.unwrap(), v);
    assert!(
        again
            .active_modules()
            .await
            .unwrap()
            .iter()
            .any(|m| m.name == "keep")
    );
    again.close().await;
}

#[tokio::test]
async fn sqlite_modules() {
    let (s, e) = Engine::sqlite().await;
    modules_deploy_rollback_undeploy(&s).await;
    e.cleanup(s).await;
}

#[tokio::test]
async fn postgres_modules() {
    let (s, e) = Engine::postgres().await;
    modules_deploy_rollback_undeploy(&s).await;
    e.cleanup(s).await;
}

#[tokio::test]
async fn sqlite_batched_and_pending_deploys() {
    let (s, e) = Engine::sqlite().await;
    batched_and_pending_deploys(&s).await;
    e.cleanup(s).await;
}

#[tokio::test]
async fn postgres_batched_and_pending_deploys() {
    let (s, e) = Engine::postgres().await;
    batched_and_pending_deploys(&s).await;
    e.cleanup(s).await;
}

#[tokio::test]
async fn sqlite_channels() {
    let (s, e) = Engine::sqlite().await;
    channels_crud(&s).await;
    e.cleanup(s).await;
}

#[tokio::test]
async fn postgres_channels() {
    let (s, e) = Engine::postgres().await;
    channels_crud(&s).await;
    e.cleanup(s).await;
}

#[tokio::test]
async fn sqlite_reopen() {
    let (s, e) = Engine::sqlite().await;
    let Engine::Sqlite(dir) = &e else {
        unreachable!()
    };
    let url = format!("sqlite:{}", dir.join("oxbus.db").display());
    reopen_keeps_everything(|| url.clone(), s.clone()).await;
    e.cleanup(s).await;
}

#[tokio::test]
async fn postgres_reopen() {
    let (s, e) = Engine::postgres().await;
    let Engine::Postgres(db) = &e else {
        unreachable!()
    };
    let base = admin_url();
    let url = format!("{}/{db}", &base[..base.rfind('/').unwrap()]);
    reopen_keeps_everything(|| url.clone(), s.clone()).await;
    e.cleanup(s).await;
}

#[tokio::test]
async fn bad_url_is_a_clear_error() {
    let e = Store::open("mysql://x").await.unwrap_err().to_string();
    assert!(e.contains("neither sqlite"), "{e}");
}

async fn secrets_crud(s: &Store) {
    assert_eq!(s.any_sealed().await.unwrap(), None);
    let v0 = s.version().await.unwrap();
    let c = s
        .put_secret("crm.password", "oxbus1:k:n:aa", "t")
        .await
        .unwrap();
    assert!(c.value, "created");
    assert_eq!(c.config_version, v0 + 1);
    let c = s
        .put_secret("crm.password", "oxbus1:k:n:bb", "u")
        .await
        .unwrap();
    assert!(!c.value, "replaced");
    let all = s.secrets().await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].sealed, "oxbus1:k:n:bb");
    assert_eq!(all[0].updated_by, "u");
    assert!(all[0].services.is_empty(), "no reader by default");
    // Readers only: the value stays; a value only: the readers stay.
    let readers = vec!["crm.*".to_owned(), "billing.charge".to_owned()];
    s.put_secret_with("crm.password", None, Some(&readers), "r")
        .await
        .unwrap();
    let all = s.secrets().await.unwrap();
    assert_eq!(all[0].sealed, "oxbus1:k:n:bb");
    assert_eq!(all[0].services, readers);
    s.put_secret("crm.password", "oxbus1:k:n:b2", "u")
        .await
        .unwrap();
    let all = s.secrets().await.unwrap();
    assert_eq!(all[0].sealed, "oxbus1:k:n:b2");
    assert_eq!(all[0].services, readers);
    assert!(matches!(
        s.put_secret_with("absent", None, Some(&readers), "r").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        s.put_secret_with("crm.password", None, Some(&["a b".to_owned()]), "r")
            .await,
        Err(StoreError::Invalid(_))
    ));
    s.put_secret_with("crm.password", None, Some(&[]), "r")
        .await
        .unwrap();
    assert!(s.secrets().await.unwrap()[0].services.is_empty());
    assert_eq!(
        s.any_sealed().await.unwrap().as_deref(),
        Some("oxbus1:k:n:b2")
    );
    assert!(matches!(
        s.put_secret("bad name", "x", "t").await,
        Err(StoreError::Invalid(_))
    ));
    s.delete_secret("crm.password").await.unwrap();
    assert!(matches!(
        s.delete_secret("crm.password").await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(s.version().await.unwrap(), v0 + 6);
}

/// A plan is applied whole with one version bump, or (a bad name in it) not at all.
async fn security_crud(s: &Store) {
    use oxbus_supervisor::model::security::{SecurityDef, SecurityType};
    let def = SecurityDef {
        name: "partners".into(),
        kind: SecurityType::Apikey,
        username: None,
        realm: None,
        header: Some("X-Partner-Key".into()),
        algorithms: vec![],
        issuer: None,
        audience: None,
        public_key: None,
        jwks_file: None,
        leeway_s: None,
        rate_limit: None,
        sealed: Some("oxbus1:k:n:c1".into()),
    };
    let v0 = s.version().await.unwrap();
    s.put_object(&def, true, "t").await.unwrap();
    assert!(matches!(
        s.put_object(&def, true, "t").await,
        Err(StoreError::Invalid(_))
    ));
    let changed = SecurityDef {
        sealed: Some("oxbus1:k:n:c2".into()),
        ..def.clone()
    };
    let c = s.put_object(&changed, false, "t").await.unwrap();
    assert_eq!(c.config_version, v0 + 2);
    assert_eq!(
        s.objects::<SecurityDef>().await.unwrap(),
        vec![changed.clone()]
    );
    let ghost = SecurityDef {
        name: "ghost".into(),
        ..def.clone()
    };
    assert!(matches!(
        s.put_object(&ghost, false, "t").await,
        Err(StoreError::NotFound(_))
    ));
    // In use by a channel: not deleted.
    let ch = Channel {
        name: Some("guarded".into()),
        url_path: "/guarded".into(),
        methods: vec![],
        service: "svc".into(),
        data_format: DataFormat::Json,
        security: Some("partners".into()),
        allow_from: vec![],
        rate_limit: None,
        channel_type: ChannelType::Rest,
        services: vec![],
        websocket: None,
        params_priority: None,
    };
    s.create_channel(&ch).await.unwrap();
    match s.delete_object::<SecurityDef>("partners").await {
        Err(StoreError::Invalid(m)) => assert!(m.contains("guarded"), "{m}"),
        other => panic!("{other:?}"),
    }
    s.delete_channel("guarded").await.unwrap();
    s.delete_object::<SecurityDef>("partners").await.unwrap();
    assert!(s.objects::<SecurityDef>().await.unwrap().is_empty());
    assert!(matches!(
        s.delete_object::<SecurityDef>("partners").await,
        Err(StoreError::NotFound(_))
    ));
}

/// Cache definitions: create refused when it exists, replace refused when it does not, each
/// change one version; a plan puts and deletes them with everything else, or (one bad
/// definition in it) writes nothing.
async fn cache_defs_crud(s: &Store) {
    use oxbus_cache::CacheDef;
    let v0 = s.version().await.unwrap();
    assert!(s.objects::<CacheDef>().await.unwrap().is_empty());
    let sessions = CacheDef {
        max_entries: 500,
        default_expiry_s: 60,
        ..CacheDef::named("sessions")
    };
    let c = s.put_object(&sessions, true, "t").await.unwrap();
    assert_eq!(c.config_version, v0 + 1);
    match s.put_object(&sessions, true, "t").await {
        Err(StoreError::Invalid(m)) => assert!(m.contains("exists already"), "{m}"),
        other => panic!("{other:?}"),
    }
    let ghost = CacheDef::named("ghost");
    assert!(matches!(
        s.put_object(&ghost, false, "t").await,
        Err(StoreError::NotFound(_))
    ));
    // Refused before anything is written: the message names the field.
    let bad = CacheDef {
        max_entries: 0,
        ..CacheDef::named("bad")
    };
    match s.put_object(&bad, true, "t").await {
        Err(StoreError::Invalid(m)) => assert!(m.contains("max_entries"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.version().await.unwrap(), v0 + 1);
    let replaced = CacheDef {
        replicate: false,
        extend_expiry_on_get: true,
        ..sessions.clone()
    };
    let c = s.put_object(&replaced, false, "t").await.unwrap();
    assert_eq!(c.config_version, v0 + 2);
    let default = CacheDef {
        max_entries: 7,
        ..CacheDef::builtin_default()
    };
    s.put_object(&default, true, "t").await.unwrap();
    // By name.
    assert_eq!(
        s.objects::<CacheDef>().await.unwrap(),
        vec![default.clone(), replaced.clone()]
    );

    // A plan: one version for every change of it.
    let v1 = s.version().await.unwrap();
    let plan = oxbus_supervisor::store::Plan {
        caches: ObjectChanges {
            put: vec![CacheDef::named("a"), CacheDef::named("b")],
            delete: vec!["sessions".into()],
        },
        ..Default::default()
    };
    assert_eq!(
        s.apply(&plan, "import").await.unwrap().config_version,
        v1 + 1
    );
    let names: Vec<String> = s
        .objects::<CacheDef>()
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(names, ["a", "b", "default"]);
    let bad_plan = oxbus_supervisor::store::Plan {
        caches: ObjectChanges {
            put: vec![CacheDef::named("c"), CacheDef::named("no spaces")],
            delete: vec!["a".into()],
        },
        ..Default::default()
    };
    assert!(matches!(
        s.apply(&bad_plan, "import").await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(s.version().await.unwrap(), v1 + 1);
    assert_eq!(s.objects::<CacheDef>().await.unwrap().len(), 3);

    s.delete_object::<CacheDef>("a").await.unwrap();
    assert!(matches!(
        s.delete_object::<CacheDef>("a").await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(s.version().await.unwrap(), v1 + 2);
    assert_eq!(s.objects::<CacheDef>().await.unwrap().len(), 2);
}

/// Scheduler jobs: create refused when it exists, replace refused when it does not, each
/// change one version; a start date left out is the time of creation, and a replace that
/// leaves it out keeps the stored one; enable/disable change `active` alone; a plan puts and
/// deletes them with everything else, or (one bad job in it) writes nothing.
async fn jobs_crud(s: &Store) {
    use oxbus_supervisor::model::job::{JobDef, JobType, parse_start_date};
    let v0 = s.version().await.unwrap();
    assert!(s.objects::<JobDef>().await.unwrap().is_empty());
    let every = JobDef {
        minutes: 5,
        extra: Some(serde_json::json!({"to": ["a", "b"], "n": 1})),
        start_date: Some("2026-12-01T08:00:00+01:00".into()),
        ..JobDef::new("ping", JobType::IntervalBased, "demo.ping")
    };
    let c = s.put_object(&every, true, "t").await.unwrap();
    assert_eq!(c.config_version, v0 + 1);
    assert_eq!(c.value, every, "stored as given");
    match s.put_object(&every, true, "t").await {
        Err(StoreError::Invalid(m)) => assert!(m.contains("exists already"), "{m}"),
        other => panic!("{other:?}"),
    }
    let ghost = JobDef::new("ghost", JobType::OneTime, "s");
    assert!(matches!(
        s.put_object(&ghost, false, "t").await,
        Err(StoreError::NotFound(_))
    ));
    // Refused before anything is written: the message names the field.
    let bad = JobDef {
        cron: Some("61 * * * *".into()),
        ..JobDef::new("bad", JobType::CronStyle, "s")
    };
    match s.put_object(&bad, true, "t").await {
        Err(StoreError::Invalid(m)) => assert!(m.contains("cron:"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.version().await.unwrap(), v0 + 1);

    // No start date: the time of creation; a replace without one keeps it.
    let before = chrono::Utc::now() - chrono::TimeDelta::seconds(1);
    let daily = JobDef {
        cron: Some("0 8 * * *".into()),
        ..JobDef::new("daily", JobType::CronStyle, "demo.report")
    };
    let created = s.put_object(&daily, true, "t").await.unwrap().value;
    let start = created.start().unwrap();
    assert!(start >= before && start <= chrono::Utc::now(), "{start}");
    assert_eq!(created.timezone.as_deref(), Some("UTC"), "made explicit");
    let replaced = JobDef {
        active: false,
        jitter_ms: 500,
        ..daily.clone()
    };
    let c = s.put_object(&replaced, false, "t").await.unwrap();
    assert_eq!(c.config_version, v0 + 3);
    assert_eq!(c.value.start_date, created.start_date);
    assert!(!c.value.active);
    // A replace that gives one: stored as given.
    let moved = JobDef {
        start_date: Some("2027-01-01T00:00:00-05:00".into()),
        ..replaced.clone()
    };
    let c = s.put_object(&moved, false, "t").await.unwrap();
    assert_eq!(
        c.value.start_date.as_deref(),
        Some("2027-01-01T00:00:00-05:00")
    );
    assert_eq!(
        c.value.start().unwrap(),
        parse_start_date("2027-01-01T05:00:00Z").unwrap()
    );

    // Enable / disable: `active` alone changes, one version each.
    let v = s.version().await.unwrap();
    let c = s.set_job_active("daily", true, "t").await.unwrap();
    assert_eq!(c.config_version, v + 1);
    assert_eq!(
        c.value,
        JobDef {
            active: true,
            timezone: Some("UTC".into()),
            ..moved.clone()
        }
    );
    let c = s.set_job_active("ping", false, "t").await.unwrap();
    assert_eq!(
        c.value,
        JobDef {
            active: false,
            ..every.clone()
        }
    );
    assert!(matches!(
        s.set_job_active("ghost", true, "t").await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(s.version().await.unwrap(), v + 2);
    // By name, as stored.
    let all = s.objects::<JobDef>().await.unwrap();
    let names: Vec<&str> = all.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, ["daily", "ping"]);
    assert!(all[0].active && !all[1].active);
    assert_eq!(all[1].extra, every.extra);

    // A plan: one version for every change of it.
    let v1 = s.version().await.unwrap();
    let plan = oxbus_supervisor::store::Plan {
        jobs: ObjectChanges {
            put: vec![
                JobDef::new("a", JobType::OneTime, "s"),
                JobDef {
                    start_date: None,
                    ..JobDef {
                        active: true,
                        ..every.clone()
                    }
                },
            ],
            delete: vec!["daily".into()],
        },
        ..Default::default()
    };
    assert_eq!(
        s.apply(&plan, "import").await.unwrap().config_version,
        v1 + 1
    );
    let all = s.objects::<JobDef>().await.unwrap();
    let names: Vec<&str> = all.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, ["a", "ping"]);
    assert!(all[0].start().is_ok(), "created: a start date");
    assert_eq!(all[1], every, "replaced: the stored start date kept");
    let bad_plan = oxbus_supervisor::store::Plan {
        jobs: ObjectChanges {
            put: vec![
                JobDef::new("c", JobType::OneTime, "s"),
                JobDef::new("no spaces", JobType::OneTime, "s"),
            ],
            delete: vec!["a".into()],
        },
        ..Default::default()
    };
    assert!(matches!(
        s.apply(&bad_plan, "import").await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(s.version().await.unwrap(), v1 + 1);
    assert_eq!(s.objects::<JobDef>().await.unwrap().len(), 2);

    s.delete_object::<JobDef>("a").await.unwrap();
    assert!(matches!(
        s.delete_object::<JobDef>("a").await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(s.version().await.unwrap(), v1 + 2);
    assert_eq!(s.objects::<JobDef>().await.unwrap(), [every]);
}

async fn apply_is_one_transaction(s: &Store) {
    let ch = |name: &str, path: &str| Channel {
        name: Some(name.into()),
        url_path: path.into(),
        methods: vec![],
        service: "svc".into(),
        data_format: DataFormat::Json,
        security: None,
        allow_from: vec![],
        rate_limit: None,
        channel_type: ChannelType::Rest,
        services: vec![],
        websocket: None,
        params_priority: None,
    };
    s.create_channel(&ch("old", "/old")).await.unwrap();
    s.deploy_module("gone", "x = 1\n", "t").await.unwrap();
    let v0 = s.version().await.unwrap();
    let plan = oxbus_supervisor::store::Plan {
        put_channels: vec![ch("a", "/a"), ch("old", "/old2")],
        delete_channels: vec![],
        put_secrets: vec![("s".into(), "oxbus1:k:n:cc".into())],
        secret_services: [("s".to_owned(), vec!["svc.*".to_owned()])].into(),
        delete_secrets: vec![],
        deploy_modules: vec![("m".into(), "y = 2\n".into())],
        undeploy_modules: vec!["gone".into()],
        security: ObjectChanges::default(),
        caches: ObjectChanges::default(),
        jobs: ObjectChanges::default(),
        outgoing_rest: ObjectChanges {
            put: vec![
                serde_json::from_value(serde_json::json!({
                    "name": "crm", "address": "https://crm.example.com",
                    "auth": {"type": "bearer", "sealed": "oxbus1:k:n:cc"},
                }))
                .unwrap(),
            ],
            delete: vec![],
        },
        outgoing_sql: ObjectChanges {
            put: vec![
                serde_json::from_value(serde_json::json!({
                    "name": "db", "engine": "sqlite", "url": "sqlite:///tmp/x.db",
                }))
                .unwrap(),
            ],
            delete: vec![],
        },
        pubsub_topics: ObjectChanges {
            put: vec![serde_json::from_value(serde_json::json!({"name": "/orders/new"})).unwrap()],
            delete: vec![],
        },
        pubsub_subs: ObjectChanges {
            put: vec![
                serde_json::from_value(serde_json::json!({
                    "sub_key": "sk.plan", "topic": "/orders/*", "delivery": {"type": "pull"},
                }))
                .unwrap(),
            ],
            delete: vec![],
        },
        pubsub_endpoints: ObjectChanges {
            put: vec![
                serde_json::from_value(serde_json::json!({
                    "name": "crm", "security": "crm-basic", "topic_patterns": ["pub=/orders/*"],
                }))
                .unwrap(),
            ],
            delete: vec![],
        },
        ..Default::default()
    };
    let before_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let c = s.apply(&plan, "import").await.unwrap();
    let set = s.object_set().await.unwrap();
    assert_eq!(set.outgoing_rest, plan.outgoing_rest.put);
    assert_eq!(set.outgoing_sql, plan.outgoing_sql.put);
    assert_eq!(set.pubsub_topics, plan.pubsub_topics.put);
    assert_eq!(set.pubsub_endpoints, plan.pubsub_endpoints.put);
    // A subscription without created_at_ms is made at the import.
    assert_eq!(set.pubsub_subs.len(), 1);
    assert!(
        set.pubsub_subs[0].created_at_ms >= before_ms,
        "{:?}",
        set.pubsub_subs[0]
    );
    assert_eq!(c.config_version, v0 + 1);
    assert_eq!(s.secrets().await.unwrap()[0].services, ["svc.*"]);
    assert_eq!(c.value.len(), 1);
    assert_eq!(c.value[0].name, "m");
    let mut paths: Vec<String> = s
        .channels()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.url_path)
        .collect();
    paths.sort();
    assert_eq!(paths, ["/a", "/old2"]);
    let active: Vec<String> = s
        .active_modules()
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(active, ["m"]);
    assert_eq!(s.secrets().await.unwrap().len(), 1);

    // One bad entry: nothing of the plan is written.
    let bad = oxbus_supervisor::store::Plan {
        delete_channels: vec!["a".into()],
        put_secrets: vec![("ok".into(), "oxbus1:k:n:dd".into())],
        deploy_modules: vec![("not a module".into(), "z = 3\n".into())],
        ..Default::default()
    };
    assert!(matches!(
        s.apply(&bad, "import").await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(s.version().await.unwrap(), v0 + 1);
    assert_eq!(s.channels().await.unwrap().len(), 2);
    assert_eq!(s.secrets().await.unwrap().len(), 1);
}

/// User config: created, replaced, deleted one version each (a create of an existing name
/// and a replace of a missing one refused); a value that is not a JSON object refused before
/// anything is written; a plan puts and deletes them with one version, or (one bad entry)
/// writes nothing; `object_set` carries them (the snapshot and sync read that).
async fn user_config_crud(s: &Store) {
    use oxbus_supervisor::model::user_config::UserConfig;
    let uc = |name: &str, value: serde_json::Value| UserConfig {
        name: name.into(),
        description: None,
        value,
    };
    let v0 = s.version().await.unwrap();
    assert!(s.objects::<UserConfig>().await.unwrap().is_empty());
    let crm = UserConfig {
        description: Some("CRM".into()),
        ..uc(
            "crm",
            serde_json::json!({"api": {"url": "https://crm", "retries": 3}}),
        )
    };
    assert_eq!(
        s.put_object(&crm, true, "t").await.unwrap().config_version,
        v0 + 1
    );
    match s.put_object(&crm, true, "t").await {
        Err(StoreError::Invalid(m)) => assert!(m.contains("exists already"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        s.put_object(&uc("ghost", serde_json::json!({})), false, "t")
            .await,
        Err(StoreError::NotFound(_))
    ));
    match s
        .put_object(&uc("bad", serde_json::json!([1])), true, "t")
        .await
    {
        Err(StoreError::Invalid(m)) => assert!(m.contains("must be a JSON object"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.version().await.unwrap(), v0 + 1);
    // Stored as given, nested values and text in any script included.
    let replaced = uc(
        "crm",
        serde_json::json!({"api": {"name": "Zażółć", "n": [1, 2.5, null]}}),
    );
    assert_eq!(
        s.put_object(&replaced, false, "t")
            .await
            .unwrap()
            .config_version,
        v0 + 2
    );
    assert_eq!(
        s.objects::<UserConfig>().await.unwrap(),
        std::slice::from_ref(&replaced)
    );
    assert_eq!(
        s.object_set().await.unwrap().user_config,
        std::slice::from_ref(&replaced)
    );

    let v1 = s.version().await.unwrap();
    let plan = oxbus_supervisor::store::Plan {
        user_config: ObjectChanges {
            put: vec![
                uc("a", serde_json::json!({})),
                uc("b", serde_json::json!({"s": {}})),
            ],
            delete: vec!["crm".into()],
        },
        ..Default::default()
    };
    assert_eq!(
        s.apply(&plan, "import").await.unwrap().config_version,
        v1 + 1
    );
    assert_eq!(
        s.objects::<UserConfig>().await.unwrap(),
        plan.user_config.put
    );
    let bad_plan = oxbus_supervisor::store::Plan {
        user_config: ObjectChanges {
            put: vec![
                uc("c", serde_json::json!({})),
                uc("d", serde_json::json!("text")),
            ],
            delete: vec!["a".into()],
        },
        ..Default::default()
    };
    assert!(matches!(
        s.apply(&bad_plan, "import").await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(s.version().await.unwrap(), v1 + 1);
    assert_eq!(s.objects::<UserConfig>().await.unwrap().len(), 2);

    s.delete_object::<UserConfig>("a").await.unwrap();
    assert!(matches!(
        s.delete_object::<UserConfig>("a").await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(s.version().await.unwrap(), v1 + 2);
    assert_eq!(
        s.objects::<UserConfig>().await.unwrap(),
        [uc("b", serde_json::json!({"s": {}}))]
    );
}

#[tokio::test]
async fn sqlite_user_config() {
    let (s, e) = Engine::sqlite().await;
    user_config_crud(&s).await;
    e.cleanup(s).await;
}

#[tokio::test]
async fn postgres_user_config() {
    let (s, e) = Engine::postgres().await;
    user_config_crud(&s).await;
    e.cleanup(s).await;
}

#[tokio::test]
async fn sqlite_secrets() {
    let (s, e) = Engine::sqlite().await;
    secrets_crud(&s).await;
    apply_is_one_transaction(&s).await;
    security_crud(&s).await;
    e.cleanup(s).await;
}

#[tokio::test]
async fn sqlite_cache_defs() {
    let (s, e) = Engine::sqlite().await;
    cache_defs_crud(&s).await;
    e.cleanup(s).await;
}

#[tokio::test]
async fn postgres_secrets() {
    let (s, e) = Engine::postgres().await;
    secrets_crud(&s).await;
    apply_is_one_transaction(&s).await;
    security_crud(&s).await;
    e.cleanup(s).await;
}

#[tokio::test]
async fn sqlite_jobs() {
    let (s, e) = Engine::sqlite().await;
    jobs_crud(&s).await;
    e.cleanup(s).await;
}

#[tokio::test]
async fn postgres_jobs() {
    let (s, e) = Engine::postgres().await;
    jobs_crud(&s).await;
    e.cleanup(s).await;
}

#[tokio::test]
async fn postgres_cache_defs() {
    let (s, e) = Engine::postgres().await;
    cache_defs_crud(&s).await;
    e.cleanup(s).await;
}

#[test]
fn passwords_are_redacted_from_store_urls() {
    use oxbus_supervisor::store::redact_url;
    assert_eq!(
        redact_url("postgres://app:s3cret@db:5432/oxbus"),
        "postgres://app:***@db:5432/oxbus"
    );
    assert_eq!(
        redact_url("postgres://app:p@ss:w@db/oxbus?sslmode=require"),
        "postgres://app:***@db/oxbus?sslmode=require"
    );
    assert_eq!(
        redact_url("postgres://app@db/oxbus"),
        "postgres://app@db/oxbus"
    );
    assert_eq!(
        redact_url("sqlite:/var/lib/oxbus.db"),
        "sqlite:/var/lib/oxbus.db"
    );
}

fn server(name: &str, addr: &str, pid: i64) -> oxbus_supervisor::store::ServerRecord {
    oxbus_supervisor::store::ServerRecord {
        name: name.into(),
        http_address: addr.into(),
        oxbus_version: "0.1.0".into(),
        pid,
        started_at: 1,
        last_seen: 0,
        config_version: 0,
        bus_address: None,
    }
}

/// Makes a server's heartbeat look a minute old.
async fn age(s: &Store, name: &str) {
    let sql = "UPDATE servers SET last_seen = last_seen - 60000 WHERE name = $1";
    match s {
        Store::Sqlite(p) => sqlx::query(sql).bind(name).execute(p).await.map(drop),
        Store::Postgres(p) => sqlx::query(sql).bind(name).execute(p).await.map(drop),
    }
    .unwrap();
}

#[tokio::test]
async fn sqlite_membership_is_one_server() {
    let (s, e) = Engine::sqlite().await;
    assert!(
        s.register_server(&server("a", "h:1", 10))
            .await
            .unwrap()
            .is_empty()
    );
    let err = s
        .register_server(&server("b", "h:2", 11))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("needs a PostgreSQL store"),
        "{err}"
    );
    // A restart of the same server (same name and address) takes its row over.
    assert!(
        s.register_server(&server("a", "h:1", 12))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        !s.heartbeat_server("a", 10, 0).await.unwrap(),
        "the old pid's row is gone"
    );
    assert!(s.heartbeat_server("a", 12, 3).await.unwrap());
    assert_eq!(s.servers().await.unwrap()[0].config_version, 3);
    // A stale server does not count; a clean stop removes the row.
    age(&s, "a").await;
    assert!(
        s.register_server(&server("b", "h:2", 13))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.servers().await.unwrap().len(), 1);
    s.deregister_server("b", 13).await.unwrap();
    assert!(s.servers().await.unwrap().is_empty());
    e.cleanup(s).await;
}

#[tokio::test]
async fn postgres_membership_is_at_most_three_servers() {
    let (s, e) = Engine::postgres().await;
    for (i, n) in ["a", "b", "c"].iter().enumerate() {
        let others = s
            .register_server(&server(n, &format!("h:{i}"), i as i64))
            .await
            .unwrap();
        assert_eq!(others.len(), i);
    }
    let err = s.register_server(&server("d", "h:9", 9)).await.unwrap_err();
    assert!(err.to_string().contains("at most 3 servers"), "{err}");
    // The same name from another address is another server: refused, naming it.
    let err = s.register_server(&server("b", "h:7", 7)).await.unwrap_err();
    assert!(err.to_string().contains("already running at h:1"), "{err}");
    // Once one is stale, the fourth fits.
    age(&s, "c").await;
    let others = s.register_server(&server("d", "h:9", 9)).await.unwrap();
    let names: Vec<&str> = others.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert!(!s.heartbeat_server("c", 2, 0).await.unwrap());
    e.cleanup(s).await;
}

fn audit_row(at: i64, who: &str, kind: &str, name: &str) -> oxbus_supervisor::store::AuditRecord {
    oxbus_supervisor::store::AuditRecord {
        id: 0,
        at,
        server: "srv-1".into(),
        who: who.into(),
        action: "update".into(),
        kind: kind.into(),
        name: name.into(),
        before: Some("b".repeat(64)),
        after: None,
        cid: Some("cid-1".into()),
        detail: serde_json::json!({"version": 3}),
    }
}

/// The audit log: rows written and read back as written, newest first, every filter and the
/// paging cursor; rows past the retention deleted batch by batch, the others kept.
async fn audit_log(s: &Store) {
    use oxbus_supervisor::store::AuditQuery;
    let now = chrono::Utc::now().timestamp_millis();
    let day = 86_400_000;
    let old = now - 100 * day;
    s.audit_insert(&[
        audit_row(old, "root", "secret", "db"),
        audit_row(old + 1, "root", "secret", "db"),
        audit_row(old + 2, "pickup", "module", "crm"),
        audit_row(now - day, "root", "channel", "/echo"),
        audit_row(now - 1000, "ci", "module", "crm"),
        audit_row(0, "root", "module", "billing"),
    ])
    .await
    .unwrap();
    fn q(f: impl FnOnce(&mut AuditQuery)) -> AuditQuery {
        let mut q = AuditQuery {
            limit: 100,
            ..Default::default()
        };
        f(&mut q);
        q
    }
    let all = s.audit_page(&q(|_| {})).await.unwrap();
    assert_eq!(all.len(), 6);
    assert!(all.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    let newest = &all[0];
    assert_eq!(
        (newest.kind.as_str(), newest.name.as_str()),
        ("module", "billing")
    );
    assert!(newest.at >= now, "0 = written now");
    assert_eq!(newest.before.as_deref(), Some("b".repeat(64).as_str()));
    assert_eq!(newest.after, None);
    assert_eq!(newest.cid.as_deref(), Some("cid-1"));
    assert_eq!(newest.detail, serde_json::json!({"version": 3}));
    assert_eq!(
        (newest.server.as_str(), newest.action.as_str()),
        ("srv-1", "update")
    );
    let names = |rows: Vec<oxbus_supervisor::store::AuditRecord>| -> Vec<String> {
        rows.into_iter()
            .map(|r| format!("{}:{}/{}", r.who, r.kind, r.name))
            .collect()
    };
    let modules = s
        .audit_page(&q(|q| q.kind = Some("module".into())))
        .await
        .unwrap();
    assert_eq!(
        names(modules),
        ["root:module/billing", "ci:module/crm", "pickup:module/crm"]
    );
    let crm = s
        .audit_page(&q(|q| {
            q.kind = Some("module".into());
            q.name = Some("crm".into());
        }))
        .await
        .unwrap();
    assert_eq!(names(crm), ["ci:module/crm", "pickup:module/crm"]);
    let by_root = s
        .audit_page(&q(|q| q.who = Some("root".into())))
        .await
        .unwrap();
    assert_eq!(by_root.len(), 4);
    let recent = s
        .audit_page(&q(|q| q.since = Some(now - 2 * 86_400_000)))
        .await
        .unwrap();
    assert_eq!(
        names(recent),
        ["root:module/billing", "ci:module/crm", "root:channel//echo"]
    );
    // Every filter at once (each one its own parameter of the statement).
    let newest_id = all[0].id;
    let narrow = |who: &str| {
        let who = who.to_owned();
        q(move |q| {
            q.kind = Some("module".into());
            q.name = Some("crm".into());
            q.who = Some(who);
            q.since = Some(old);
            q.before_id = Some(newest_id);
        })
    };
    assert_eq!(
        names(s.audit_page(&narrow("ci")).await.unwrap()),
        ["ci:module/crm"]
    );
    assert_eq!(
        names(s.audit_page(&narrow("pickup")).await.unwrap()),
        ["pickup:module/crm"]
    );
    assert!(s.audit_page(&narrow("root")).await.unwrap().is_empty());
    // Paging: two at a time, each page older than the last.
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = s
            .audit_page(&AuditQuery {
                limit: 2,
                before_id: before,
                ..Default::default()
            })
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 2);
        before = page.last().map(|r| r.id);
        seen.extend(page.into_iter().map(|r| r.id));
    }
    assert_eq!(seen, all.iter().map(|r| r.id).collect::<Vec<_>>());
    // Retention (90 days): the old rows go, oldest first by time (a row written late with
    // an older time included), in batches; the rest stays.
    s.audit_insert(&[audit_row(old - 5, "root", "job", "late")])
        .await
        .unwrap();
    let cutoff = now - 90 * day;
    assert_eq!(s.audit_prune(cutoff, 1).await.unwrap(), 1);
    let jobs = s
        .audit_page(&q(|q| q.kind = Some("job".into())))
        .await
        .unwrap();
    assert!(jobs.is_empty(), "the oldest by time goes first: {jobs:?}");
    assert_eq!(s.audit_page(&q(|_| {})).await.unwrap().len(), 6);
    assert_eq!(s.audit_prune(cutoff, 2).await.unwrap(), 2);
    assert_eq!(s.audit_prune(cutoff, 2).await.unwrap(), 1);
    assert_eq!(s.audit_prune(cutoff, 2).await.unwrap(), 0);
    let left = s.audit_page(&q(|_| {})).await.unwrap();
    assert_eq!(
        names(left),
        ["root:module/billing", "ci:module/crm", "root:channel//echo"]
    );
}

#[tokio::test]
async fn sqlite_audit_log() {
    let (s, e) = Engine::sqlite().await;
    audit_log(&s).await;
    e.cleanup(s).await;
}

#[tokio::test]
async fn postgres_audit_log() {
    let (s, e) = Engine::postgres().await;
    audit_log(&s).await;
    e.cleanup(s).await;
}
