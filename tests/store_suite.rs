//! One behavioural suite for every `KeyStore`, run against the embedded store, a real
//! standalone `redis-server` and a real Redis Cluster (three masters, three replicas), plus the
//! tests only one of them needs (reopen; invalidations and outages).

mod common;

use common::cluster::RedisCluster;
use common::redis::RedisServer;
use scopegate::model::AuditEvent;
use scopegate::model::{
    now_unix, utc_date, utc_day_number, App, AppChange, CredentialChange, CredentialRecord,
    KeyChange, KeyRecord, PageRequest, RateLimit, UsageBatch, UsageCounts, UsageSubject,
};
use scopegate::model::{usage_field, DayUsage, Measure, TokenWindows};
use scopegate::store::prelude::*;
use scopegate::store::{
    Audit, EmbeddedStore, Invalidation, KeyStore, RedisStore, StoreError, TokenBatch, TOKEN_CHUNK,
    USAGE_BATCH_MEMORY_SECS, USAGE_CHUNK, USAGE_RETENTION_DAYS,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::{sleep, timeout, Instant};

const OP_TIMEOUT: Duration = Duration::from_millis(300);
/// Long enough that only a hang trips it.
const HANG: Duration = Duration::from_secs(5);

fn app(id: &str, name: &str, created_at: u64) -> App {
    App {
        id: id.to_owned(),
        name: name.to_owned(),
        scopes: vec!["read".to_owned()],
        rate_limit: None,
        quota: None,
        token_quota: None,
        created_at,
        created_by: "admin".to_owned(),
        version: 0,
        credentials: Default::default(),
    }
}

fn key(id: &str, app_id: &str, created_at: u64) -> KeyRecord {
    KeyRecord {
        id: id.to_owned(),
        app_id: app_id.to_owned(),
        name: format!("key {id}"),
        masked: "sg_a****wxyz".to_owned(),
        secret_hash: "ab".repeat(32),
        created_at,
        created_by: "admin".to_owned(),
        expires_at: None,
        last_used_at: None,
        allowed_ips: Vec::new(),
        disabled: false,
        revoked_at: None,
        revoked_by: None,
    }
}

/// One day's worth of counts: `(id, date, count)`.
fn counts(entries: &[(&str, &str, u64)]) -> Vec<(String, String, u64)> {
    entries
        .iter()
        .map(|(id, date, n)| ((*id).to_owned(), (*date).to_owned(), *n))
        .collect()
}

fn dates(list: &[&str]) -> Vec<String> {
    list.iter().map(|d| (*d).to_owned()).collect()
}

async fn key_usage(store: &dyn KeyStore, id: &str, days: &[&str]) -> Vec<u64> {
    store
        .usage(UsageSubject::Key(id), &dates(days))
        .await
        .expect("key usage")
}

async fn app_usage(store: &dyn KeyStore, id: &str, days: &[&str]) -> Vec<u64> {
    store
        .usage(UsageSubject::App(id), &dates(days))
        .await
        .expect("app usage")
}

/// Three days in a row within the retention period, across a month boundary (so across two
/// Redis hashes): the last two days of last month and the first of this one (UTC).
fn recent_days() -> &'static [String; 3] {
    static DAYS: std::sync::OnceLock<[String; 3]> = std::sync::OnceLock::new();
    DAYS.get_or_init(|| {
        let today = utc_day_number(&utc_date(now_unix())).expect("today");
        let day_of_month: u64 = utc_date(now_unix())[8..].parse().expect("day");
        let first = today - (day_of_month - 1);
        [first - 2, first - 1, first].map(|n| utc_date(n * DAY))
    })
}

fn d1() -> &'static str {
    &recent_days()[0]
}

fn d2() -> &'static str {
    &recent_days()[1]
}

fn d3() -> &'static str {
    &recent_days()[2]
}

const DAY: u64 = 86_400;

/// These counts under a fresh batch id.
fn fresh(counts: &UsageCounts) -> UsageBatch {
    UsageBatch::new(counts.clone())
}

fn ids_of_apps(apps: &[App]) -> Vec<&str> {
    apps.iter().map(|a| a.id.as_str()).collect()
}

fn ids_of_keys(keys: &[KeyRecord]) -> Vec<&str> {
    keys.iter().map(|k| k.id.as_str()).collect()
}

/// Every app, following the pages.
async fn all_apps(store: &dyn KeyStore) -> Vec<App> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = store
            .list_apps(
                PageRequest {
                    cursor: cursor.as_deref(),
                    limit: 2,
                },
                &|_| true,
            )
            .await
            .expect("list apps");
        all.extend(page.items);
        match page.next {
            Some(next) => cursor = Some(next),
            None => return all,
        }
    }
}

/// Every key (of one app, or all), following the pages.
async fn list_all_keys(
    store: &dyn KeyStore,
    app_id: Option<&str>,
) -> Result<Vec<KeyRecord>, StoreError> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = store
            .list_keys(
                app_id,
                PageRequest {
                    cursor: cursor.as_deref(),
                    limit: 2,
                },
                &|_| true,
            )
            .await?;
        all.extend(page.items);
        match page.next {
            Some(next) => cursor = Some(next),
            None => return Ok(all),
        }
    }
}

/// Sets every editable field of the stored app to `app`'s.
async fn replace_app(store: &dyn KeyStore, app: &App) -> Result<(), StoreError> {
    let change = AppChange {
        name: Some(app.name.clone()),
        scopes: Some(app.scopes.clone()),
        rate_limit: Some(app.rate_limit),
        quota: Some(app.quota),
        token_quota: Some(app.token_quota),
        credentials: Some(app.credentials.clone()),
    };
    store.update_app(&app.id, &change, None).await.map(drop)
}

/// Deletes an app and revokes its keys, as the admin API's background task does.
async fn delete_app_fully(store: &dyn KeyStore, id: &str) -> bool {
    let deleted = store
        .delete_app(id, "admin", None)
        .await
        .expect("delete app");
    while store
        .revoke_keys_of_deleted_apps(1_000)
        .await
        .expect("revoke keys")
        > 0
    {}
    deleted
}

// ---------------------------------------------------------------- the shared suite

async fn apps_crud(store: &dyn KeyStore) {
    assert!(all_apps(store).await.is_empty());
    assert_eq!(store.get_app("a1").await.expect("get"), None);
    // Created out of order; the tie at 20 is broken by id.
    store
        .create_app(&app("a3", "three", 30))
        .await
        .expect("create");
    store
        .create_app(&app("a2", "two", 20))
        .await
        .expect("create");
    store
        .create_app(&app("a1", "one", 20))
        .await
        .expect("create");
    assert_eq!(
        store.get_app("a2").await.expect("get"),
        Some(app("a2", "two", 20))
    );
    let listed = all_apps(store).await;
    assert_eq!(ids_of_apps(&listed), ["a1", "a2", "a3"]);

    let mut changed = app("a2", "two", 20);
    changed.scopes = vec!["write".to_owned()];
    replace_app(store, &changed).await.expect("update");
    changed.version = 1;
    assert_eq!(store.get_app("a2").await.expect("get"), Some(changed));
    assert!(matches!(
        replace_app(store, &app("nope", "x", 1)).await,
        Err(StoreError::NotFound)
    ));

    assert!(delete_app_fully(store, "a2").await);
    assert!(!delete_app_fully(store, "a2").await);
    assert_eq!(store.get_app("a2").await.expect("get"), None);
    let listed = all_apps(store).await;
    assert_eq!(ids_of_apps(&listed), ["a1", "a3"]);
}

async fn app_name_conflicts(store: &dyn KeyStore) {
    store
        .create_app(&app("a1", "Billing", 1))
        .await
        .expect("create");
    store
        .create_app(&app("a2", "Search", 2))
        .await
        .expect("create");
    assert!(matches!(
        store.create_app(&app("a3", "bILLING", 3)).await,
        Err(StoreError::Conflict)
    ));
    assert!(matches!(
        store.create_app(&app("a1", "Fresh name", 3)).await,
        Err(StoreError::Conflict)
    ));
    // Renaming onto another app's name, in any case.
    assert!(matches!(
        replace_app(store, &app("a2", "BILLING", 2)).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(
        store.get_app("a2").await.expect("get"),
        Some(app("a2", "Search", 2))
    );
    // Changing only the case of one's own name is fine.
    replace_app(store, &app("a1", "BILLING", 1))
        .await
        .expect("recase");
    // Renaming frees the old name.
    replace_app(store, &app("a1", "Payments", 1))
        .await
        .expect("rename");
    store
        .create_app(&app("a3", "billing", 3))
        .await
        .expect("old name is free");
    assert!(matches!(
        store.create_app(&app("a4", "payments", 4)).await,
        Err(StoreError::Conflict)
    ));
    // Deleting frees the name.
    assert!(delete_app_fully(store, "a1").await);
    store
        .create_app(&app("a4", "Payments", 4))
        .await
        .expect("deleted app's name is free");
}

async fn keys_crud(store: &dyn KeyStore) {
    store.create_app(&app("a1", "one", 1)).await.expect("app");
    store.create_app(&app("a2", "two", 2)).await.expect("app");
    assert!(list_all_keys(store, None).await.expect("list").is_empty());
    assert_eq!(store.get_key("k1").await.expect("get"), None);

    store.create_key(&key("k3", "a1", 30)).await.expect("key");
    store.create_key(&key("k2", "a2", 10)).await.expect("key");
    store.create_key(&key("k1", "a1", 10)).await.expect("key");
    assert_eq!(
        store.get_key("k3").await.expect("get"),
        Some(key("k3", "a1", 30))
    );
    assert_eq!(
        ids_of_keys(&list_all_keys(store, None).await.expect("all")),
        ["k1", "k2", "k3"]
    );
    assert_eq!(
        ids_of_keys(&list_all_keys(store, Some("a1")).await.expect("a1")),
        ["k1", "k3"]
    );
    assert_eq!(
        ids_of_keys(&list_all_keys(store, Some("a2")).await.expect("a2")),
        ["k2"]
    );
    assert!(list_all_keys(store, Some("missing"))
        .await
        .expect("none")
        .is_empty());
    assert!(matches!(
        store.create_key(&key("k1", "a2", 5)).await,
        Err(StoreError::Conflict)
    ));

    assert!(store.delete_key("k1").await.expect("delete"));
    assert!(!store.delete_key("k1").await.expect("delete again"));
    assert_eq!(store.get_key("k1").await.expect("get"), None);
    assert_eq!(
        ids_of_keys(&list_all_keys(store, Some("a1")).await.expect("a1")),
        ["k3"]
    );
    assert_eq!(
        ids_of_keys(&list_all_keys(store, None).await.expect("all")),
        ["k2", "k3"]
    );
}

async fn create_key_needs_app(store: &dyn KeyStore) {
    assert!(matches!(
        store.create_key(&key("k1", "ghost", 1)).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(store.get_key("k1").await.expect("get"), None);
    assert!(list_all_keys(store, None).await.expect("list").is_empty());
}

async fn delete_app_revokes_its_keys(store: &dyn KeyStore) {
    store.create_app(&app("a1", "one", 1)).await.expect("app");
    store.create_app(&app("a2", "two", 2)).await.expect("app");
    let mut expiring = key("k1", "a1", 1);
    expiring.expires_at = Some(5_000);
    store.create_key(&expiring).await.expect("key");
    store.create_key(&key("k2", "a1", 2)).await.expect("key");
    store.create_key(&key("k3", "a2", 3)).await.expect("key");
    store
        .touch_keys(&[("k1".to_owned(), 100)])
        .await
        .expect("touch");
    assert_eq!(store.count_expiring(0, 10_000).await.expect("count"), 1);

    assert!(store.delete_app("a1", "ops", None).await.expect("delete"));
    while store
        .revoke_keys_of_deleted_apps(1_000)
        .await
        .expect("revoke")
        > 0
    {}
    // The keys stay, revoked by whoever deleted the app, listed among all keys.
    for id in ["k1", "k2"] {
        let k = store.get_key(id).await.expect("get").expect("kept");
        assert_eq!(
            (k.revoked_at, k.revoked_by.as_deref()),
            (Some(1_000), Some("ops"))
        );
    }
    assert_eq!(
        ids_of_keys(&list_all_keys(store, None).await.expect("all")),
        ["k1", "k2", "k3"]
    );
    assert!(list_all_keys(store, Some("a1"))
        .await
        .expect("a1")
        .is_empty());
    assert_eq!(store.count_expiring(0, 10_000).await.expect("count"), 0);
    assert_eq!(
        store.revoked_before(1_000).await.expect("revoked"),
        Vec::<String>::new()
    );
    let mut due = store.revoked_before(1_001).await.expect("revoked");
    due.sort();
    assert_eq!(due, ["k1", "k2"]);

    // Purged: gone with its last-use time, so a new key reusing the id starts clean.
    assert!(store.delete_key("k1").await.expect("purge"));
    assert_eq!(store.revoked_before(1_001).await.expect("revoked"), ["k2"]);
    store.create_app(&app("a1", "one", 1)).await.expect("app");
    store.create_key(&key("k1", "a1", 1)).await.expect("key");
    assert_eq!(
        store.get_key("k1").await.expect("get"),
        Some(key("k1", "a1", 1))
    );
}

async fn key_changes_apply_to_the_stored_key(store: &dyn KeyStore) {
    store.create_app(&app("a1", "one", 1)).await.expect("app");
    store.create_key(&key("k1", "a1", 1)).await.expect("key");
    let disabled = store
        .update_key("k1", &KeyChange::Disable)
        .await
        .expect("disable");
    assert!(disabled.disabled);
    assert!(
        store
            .get_key("k1")
            .await
            .expect("get")
            .expect("key")
            .disabled
    );
    let enabled = store
        .update_key("k1", &KeyChange::Enable)
        .await
        .expect("enable");
    assert!(!enabled.disabled);
    // A roll's grace only ever moves the end earlier.
    let ended = store
        .update_key("k1", &KeyChange::EndBy(9_000))
        .await
        .expect("end");
    assert_eq!(ended.expires_at, Some(9_000));
    assert_eq!(store.count_expiring(8_000, 9_000).await.expect("count"), 1);
    let ended = store
        .update_key("k1", &KeyChange::EndBy(9_500))
        .await
        .expect("end");
    assert_eq!(ended.expires_at, Some(9_000));
    let revoke = KeyChange::Revoke {
        at: 2_000,
        by: "alice".into(),
    };
    let revoked = store.update_key("k1", &revoke).await.expect("revoke");
    assert_eq!(revoked.revoked_at, Some(2_000));
    assert_eq!(store.count_expiring(8_000, 9_000).await.expect("count"), 0);
    // Nothing changes a revoked key.
    for change in [KeyChange::Enable, KeyChange::Disable, revoke] {
        assert!(matches!(
            store.update_key("k1", &change).await,
            Err(StoreError::Revoked)
        ));
    }
    assert!(matches!(
        store.update_key("nope", &KeyChange::Disable).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(
        store
            .get_key("k1")
            .await
            .expect("get")
            .expect("key")
            .revoked_by
            .as_deref(),
        Some("alice")
    );
}

/// An audit maker that names what it was made from.
fn audit<T: 'static>(action: &'static str, key_of: fn(&T) -> String) -> Audit<T> {
    Arc::new(move |done: &T| AuditEvent {
        at: 1_000,
        actor: "alice".to_owned(),
        action: action.to_owned(),
        app_id: None,
        key_id: Some(key_of(done)),
        details: serde_json::json!({}),
    })
}

/// The audit log, newest first, as (action, key id).
async fn audit_log(store: &dyn KeyStore) -> Vec<(String, Option<String>)> {
    let page = store
        .list_audit(
            PageRequest {
                cursor: None,
                limit: 100,
            },
            &|_| true,
        )
        .await
        .expect("audit");
    page.items
        .into_iter()
        .map(|e| (e.action, e.key_id))
        .collect()
}

/// Each audited write keeps its event in the same step, made from what the write did; a
/// write that is refused keeps none.
async fn writes_keep_their_audit_event(store: &dyn KeyStore) {
    let made = audit("app.created", |a: &App| a.id.clone());
    let mut one = app("a1", "one", 1);
    store
        .create_app_audited(&one, Some(&made))
        .await
        .expect("app");
    one.id = "a2".into();
    assert!(matches!(
        store.create_app_audited(&one, Some(&made)).await,
        Err(StoreError::Conflict)
    ));
    let change = AppChange {
        name: Some("renamed".into()),
        ..AppChange::default()
    };
    let updated = audit("app.updated", |(_, after): &(App, App)| after.name.clone());
    store
        .update_app_audited("a1", &change, None, Some(&updated))
        .await
        .expect("update");
    let created = audit("key.created", |k: &KeyRecord| k.id.clone());
    store
        .create_key_audited(&key("k1", "a1", 1), Some(&created))
        .await
        .expect("key");
    let disabled = audit("key.disabled", |k: &KeyRecord| {
        format!("{}:{}", k.id, k.disabled)
    });
    store
        .update_key_audited("k1", &KeyChange::Disable, Some(&disabled))
        .await
        .expect("disable");
    let deleted = audit("app.deleted", |a: &App| a.name.clone());
    let gone = store
        .delete_app_audited("a1", "alice", None, Some(&deleted))
        .await
        .expect("delete");
    assert_eq!(gone.map(|a| a.id), Some("a1".to_owned()));
    assert!(store
        .delete_app_audited("a1", "alice", None, Some(&deleted))
        .await
        .expect("delete again")
        .is_none());
    let entry = |action: &str, key: &str| (action.to_owned(), Some(key.to_owned()));
    assert_eq!(
        audit_log(store).await,
        vec![
            entry("app.deleted", "renamed"),
            entry("key.disabled", "k1:true"),
            entry("key.created", "k1"),
            entry("app.updated", "renamed"),
            entry("app.created", "a1"),
        ]
    );
}

/// A roll stores the new key and ends the old one in one step, or does nothing: never a new
/// key beside a revoked (or missing) old one.
async fn roll_is_one_step(store: &dyn KeyStore) {
    store.create_app(&app("a1", "one", 1)).await.expect("app");
    store.create_key(&key("k1", "a1", 1)).await.expect("key");
    let rolled = audit("key.rolled", |old: &KeyRecord| old.id.clone());
    let old = store
        .roll_key(
            "k1",
            &key("k2", "a1", 2),
            &KeyChange::EndBy(9_000),
            Some(&rolled),
        )
        .await
        .expect("roll");
    assert_eq!(old.expires_at, Some(9_000));
    let new = store.get_key("k2").await.expect("get").expect("new key");
    assert_eq!(new.revoked_at, None);
    let revoke = KeyChange::Revoke {
        at: 2_000,
        by: "bob".into(),
    };
    store.update_key("k1", &revoke).await.expect("revoke");
    assert!(matches!(
        store
            .roll_key("k1", &key("k3", "a1", 3), &revoke, Some(&rolled))
            .await,
        Err(StoreError::Revoked)
    ));
    assert!(matches!(
        store
            .roll_key("nope", &key("k4", "a1", 4), &revoke, Some(&rolled))
            .await,
        Err(StoreError::NotFound)
    ));
    for id in ["k3", "k4"] {
        assert!(store.get_key(id).await.expect("get").is_none(), "{id}");
    }
    assert_eq!(
        audit_log(store).await,
        vec![("key.rolled".to_owned(), Some("k1".to_owned()))]
    );
}

async fn touch_keys_rules(store: &dyn KeyStore) {
    store.create_app(&app("a1", "one", 1)).await.expect("app");
    store.create_key(&key("k1", "a1", 1)).await.expect("key");
    store.create_key(&key("k2", "a1", 2)).await.expect("key");
    store.touch_keys(&[]).await.expect("empty batch");

    let batch = [
        ("k1".to_owned(), 100),
        ("ghost".to_owned(), 100),
        ("k2".to_owned(), 50),
    ];
    store.touch_keys(&batch).await.expect("touch");
    let last = |k: Option<KeyRecord>| k.and_then(|k| k.last_used_at);
    assert_eq!(last(store.get_key("k1").await.expect("get")), Some(100));
    assert_eq!(last(store.get_key("k2").await.expect("get")), Some(50));
    assert_eq!(store.get_key("ghost").await.expect("get"), None);

    // Never backwards, also within one batch.
    let batch = [
        ("k1".to_owned(), 90),
        ("k2".to_owned(), 70),
        ("k2".to_owned(), 60),
    ];
    store.touch_keys(&batch).await.expect("touch");
    assert_eq!(last(store.get_key("k1").await.expect("get")), Some(100));
    assert_eq!(last(store.get_key("k2").await.expect("get")), Some(70));
    let listed = list_all_keys(store, Some("a1")).await.expect("list");
    let times: Vec<_> = listed.iter().map(|k| k.last_used_at).collect();
    assert_eq!(times, [Some(100), Some(70)]);

    // A deleted key's time goes with it, and touching it later leaves nothing behind.
    assert!(store.delete_key("k2").await.expect("delete"));
    store
        .touch_keys(&[("k2".to_owned(), 500)])
        .await
        .expect("touch deleted");
    store
        .create_key(&key("k2", "a1", 2))
        .await
        .expect("recreate");
    assert_eq!(last(store.get_key("k2").await.expect("get")), None);
}

async fn records_round_trip(store: &dyn KeyStore) {
    let full_app = App {
        id: "app-ü1".to_owned(),
        name: "Zürich \"quoted\" API".to_owned(),
        scopes: vec!["orders:read".to_owned(), "orders:write".to_owned()],
        rate_limit: Some(RateLimit {
            per_second: 7,
            burst: 21,
        }),
        quota: Some(scopegate::model::Quota {
            per_day: Some(1_000),
            per_month: None,
        }),
        token_quota: Some(scopegate::model::TokenQuota {
            per_minute: Some(50_000),
            per_day: None,
            per_month: Some(9_000_000),
        }),
        created_at: 1_700_000_000,
        created_by: "ops@example.com".to_owned(),
        version: 3,
        credentials: [("models".to_owned(), "TENANT_A".to_owned())].into(),
    };
    store.create_app(&full_app).await.expect("app");
    assert_eq!(
        store.get_app(&full_app.id).await.expect("get"),
        Some(full_app.clone())
    );

    let mut full_key = KeyRecord {
        expires_at: Some(1_800_000_000),
        ..key("key-1", &full_app.id, 1_700_000_001)
    };
    store.create_key(&full_key).await.expect("key");
    store
        .touch_keys(&[(full_key.id.clone(), 1_750_000_000)])
        .await
        .expect("touch");
    full_key.last_used_at = Some(1_750_000_000);
    assert_eq!(
        store.get_key(&full_key.id).await.expect("get"),
        Some(full_key.clone())
    );
    assert_eq!(list_all_keys(store, None).await.expect("list"), [full_key]);

    // A last-use time given at creation is kept (e.g. when importing).
    let imported = KeyRecord {
        last_used_at: Some(77),
        ..key("key-2", &full_app.id, 1_700_000_002)
    };
    store.create_key(&imported).await.expect("key");
    assert_eq!(store.get_key("key-2").await.expect("get"), Some(imported));
    store.ping().await.expect("ping");
}

async fn usage_adds_up(store: &dyn KeyStore) {
    store.create_app(&app("a1", "one", 1)).await.expect("app");
    store.create_key(&key("k1", "a1", 1)).await.expect("key");
    store.create_key(&key("k2", "a1", 2)).await.expect("key");
    store
        .add_usage(&[fresh(&UsageCounts::default())])
        .await
        .expect("empty batch");

    // A repeated (id, date) within one batch adds up too.
    let first = UsageCounts {
        keys: counts(&[
            ("k1", d1(), 3),
            ("k2", d1(), 1),
            ("k1", d2(), 2),
            ("k1", d1(), 4),
        ]),
        apps: counts(&[("a1", d1(), 8), ("a1", d2(), 2)]),
    };
    store
        .add_usage(&[fresh(&first)])
        .await
        .expect("first batch");
    let second = UsageCounts {
        keys: counts(&[("k1", d2(), 5), ("k2", d3(), 7), ("k1", d3(), 0)]),
        apps: counts(&[("a1", d2(), 5), ("a1", d3(), 7)]),
    };
    store
        .add_usage(&[fresh(&second)])
        .await
        .expect("second batch");

    assert_eq!(key_usage(store, "k1", &[d1(), d2(), d3()]).await, [7, 7, 0]);
    assert_eq!(key_usage(store, "k2", &[d1(), d2(), d3()]).await, [1, 0, 7]);
    assert_eq!(app_usage(store, "a1", &[d1(), d2(), d3()]).await, [8, 7, 7]);

    // The requested order is kept, repeats included; missing dates and ids read as zeros.
    assert_eq!(
        key_usage(store, "k1", &[d3(), d1(), "1999-01-01", d2(), d1()]).await,
        [0, 7, 0, 7, 7]
    );
    assert_eq!(key_usage(store, "ghost", &[d1(), d2()]).await, [0, 0]);
    assert_eq!(app_usage(store, "ghost", &[d1()]).await, [0]);
    assert!(key_usage(store, "k1", &[]).await.is_empty());
    // Key and app counts are kept apart, even under the same id.
    assert_eq!(app_usage(store, "k1", &[d1(), d2()]).await, [0, 0]);
    assert_eq!(key_usage(store, "a1", &[d1(), d2()]).await, [0, 0]);
    let same_id = UsageCounts {
        keys: counts(&[("x1", d1(), 1)]),
        apps: counts(&[("x1", d1(), 10)]),
    };
    store.add_usage(&[fresh(&same_id)]).await.expect("same id");
    assert_eq!(key_usage(store, "x1", &[d1()]).await, [1]);
    assert_eq!(app_usage(store, "x1", &[d1()]).await, [10]);
    // A batch with only zero counts is a no-op, not an error.
    let zeros = UsageCounts {
        keys: counts(&[("k1", d1(), 0)]),
        apps: counts(&[("a1", d1(), 0)]),
    };
    store.add_usage(&[fresh(&zeros)]).await.expect("zeros");
    assert_eq!(key_usage(store, "k1", &[d1()]).await, [7]);
    assert_eq!(app_usage(store, "a1", &[d1()]).await, [8]);
}

/// Tokens are counted under their own fields of a day: read apart from requests, deleted with
/// the key, and a field that is not a measure of a day is refused.
async fn token_usage_is_kept_per_measure(store: &dyn KeyStore) {
    store.create_app(&app("a1", "one", 1)).await.expect("app");
    store.create_key(&key("k1", "a1", 1)).await.expect("key");
    let field = |d: &str, m: Measure| usage_field(d, m);
    let batch = UsageCounts {
        keys: vec![
            ("k1".into(), field(d1(), Measure::Requests), 2),
            ("k1".into(), field(d1(), Measure::InputTokens), 120),
            ("k1".into(), field(d1(), Measure::OutputTokens), 45),
            ("k1".into(), field(d3(), Measure::OutputTokens), 9),
        ],
        apps: vec![("a1".into(), field(d1(), Measure::InputTokens), 120)],
    };
    store.add_usage(&[fresh(&batch)]).await.expect("usage");
    let days = store
        .day_usage(UsageSubject::Key("k1"), &dates(&[d1(), d2(), d3()]))
        .await
        .expect("read");
    let day = |requests, input_tokens, output_tokens| DayUsage {
        requests,
        input_tokens,
        output_tokens,
    };
    assert_eq!(days, [day(2, 120, 45), day(0, 0, 0), day(0, 0, 9)]);
    let app_days = store
        .day_usage(UsageSubject::App("a1"), &dates(&[d1()]))
        .await
        .expect("read");
    assert_eq!(app_days, [day(0, 120, 0)]);
    let bad = UsageCounts {
        keys: vec![("k1".into(), format!("{}:tokens", d1()), 1)],
        apps: vec![],
    };
    assert!(store.add_usage(&[fresh(&bad)]).await.is_err());
    assert!(store.delete_key("k1").await.expect("delete"));
    let gone = store
        .day_usage(UsageSubject::Key("k1"), &dates(&[d1(), d3()]))
        .await
        .expect("read");
    assert_eq!(gone, [day(0, 0, 0), day(0, 0, 0)]);
}

/// Token-quota totals: each batch counted once however often it is sent, keys apart, reads
/// that add nothing, a new window starting from zero, chunks past [`TOKEN_CHUNK`] keys.
async fn token_ledger_counts_each_batch_once(store: &dyn KeyStore) {
    let now = now_unix();
    let windows = TokenWindows::at(now);
    let batch = |id: &str, windows: TokenWindows, spent: &[(&str, u64)]| TokenBatch {
        id: id.to_owned(),
        windows,
        spent: spent.iter().map(|(k, n)| (Arc::from(*k), *n)).collect(),
    };
    let first = batch("b1", windows, &[("k1", 100), ("k2", 7)]);
    let totals = store.add_tokens(&first, &[]).await.expect("first");
    assert_eq!(totals, [[100; 3], [7; 3]]);
    // Sent again (its answer was lost): nothing added, the totals answered all the same.
    let again = store.add_tokens(&first, &[]).await.expect("again");
    assert_eq!(again, [[100; 3], [7; 3]]);
    let second = batch("b2", windows, &[("k1", 50)]);
    let read: Vec<Arc<str>> = vec![Arc::from("k2"), Arc::from("ghost")];
    let totals = store.add_tokens(&second, &read).await.expect("second");
    assert_eq!(totals, [[150; 3], [7; 3], [0; 3]]);
    // The next minute of the same day and month: the minute starts from zero.
    let mut next_minute = windows;
    next_minute.ids[0] += 1;
    next_minute.ends[0] += 60;
    let third = batch("b3", next_minute, &[("k1", 5)]);
    let totals = store.add_tokens(&third, &[]).await.expect("third");
    assert_eq!(totals, [[5, 155, 155]]);
    // Many keys: more than one store step, each counted once.
    let many: Vec<(String, u64)> = (0..TOKEN_CHUNK * 2 + 3)
        .map(|i| (format!("m{i}"), i as u64 + 1))
        .collect();
    let spent: Vec<(&str, u64)> = many.iter().map(|(k, n)| (k.as_str(), *n)).collect();
    let big = batch("b4", windows, &spent);
    for _ in 0..2 {
        let totals = store.add_tokens(&big, &[]).await.expect("many");
        let want: Vec<[u64; 3]> = many.iter().map(|(_, n)| [*n; 3]).collect();
        assert_eq!(totals, want);
    }
}

/// A count the Redis counter (signed 64-bit) cannot take refuses the whole batch, in both stores.
async fn usage_rejects_out_of_range_counts(store: &dyn KeyStore) {
    let batch = UsageCounts {
        keys: counts(&[("k1", d1(), 1)]),
        apps: counts(&[("a1", d1(), u64::MAX)]),
    };
    assert!(matches!(
        store.add_usage(&[fresh(&batch)]).await,
        Err(StoreError::Corrupt(_))
    ));
    assert_eq!(key_usage(store, "k1", &[d1()]).await, [0]);
    assert_eq!(app_usage(store, "a1", &[d1()]).await, [0]);
    let largest = UsageCounts {
        keys: counts(&[("k1", d1(), i64::MAX as u64)]),
        apps: Vec::new(),
    };
    store
        .add_usage(&[fresh(&largest)])
        .await
        .expect("i64::MAX fits");
    assert_eq!(key_usage(store, "k1", &[d1()]).await, [i64::MAX as u64]);
}

async fn delete_key_deletes_its_usage(store: &dyn KeyStore) {
    store.create_app(&app("a1", "one", 1)).await.expect("app");
    // `k10` starts with `k1`: deleting `k1` must not touch it.
    store.create_key(&key("k1", "a1", 1)).await.expect("key");
    store.create_key(&key("k10", "a1", 2)).await.expect("key");
    let batch = UsageCounts {
        keys: counts(&[
            ("k1", d1(), 1),
            ("k1", d2(), 2),
            ("k1", d3(), 5),
            ("k10", d1(), 3),
        ]),
        apps: counts(&[("a1", d1(), 4)]),
    };
    store.add_usage(&[fresh(&batch)]).await.expect("usage");
    assert_eq!(key_usage(store, "k1", &[d1(), d2(), d3()]).await, [1, 2, 5]);

    assert!(store.delete_key("k1").await.expect("delete"));
    assert_eq!(key_usage(store, "k1", &[d1(), d2(), d3()]).await, [0, 0, 0]);
    assert_eq!(key_usage(store, "k10", &[d1(), d2()]).await, [3, 0]);
    // The app's own counts stay: they count requests that did happen.
    assert_eq!(app_usage(store, "a1", &[d1()]).await, [4]);
    // A key recreated under the same id starts from zero.
    store
        .create_key(&key("k1", "a1", 3))
        .await
        .expect("recreate");
    assert_eq!(key_usage(store, "k1", &[d1(), d2()]).await, [0, 0]);
}

async fn delete_app_deletes_its_usage(store: &dyn KeyStore) {
    store.create_app(&app("a1", "one", 1)).await.expect("app");
    store.create_app(&app("a10", "ten", 2)).await.expect("app");
    store.create_key(&key("k1", "a1", 1)).await.expect("key");
    store.create_key(&key("k2", "a1", 2)).await.expect("key");
    store.create_key(&key("k3", "a10", 3)).await.expect("key");
    let batch = UsageCounts {
        keys: counts(&[("k1", d1(), 1), ("k2", d2(), 2), ("k3", d1(), 3)]),
        apps: counts(&[("a1", d1(), 1), ("a1", d2(), 2), ("a10", d1(), 3)]),
    };
    store.add_usage(&[fresh(&batch)]).await.expect("usage");

    assert!(delete_app_fully(store, "a1").await);
    assert_eq!(app_usage(store, "a1", &[d1(), d2()]).await, [0, 0]);
    // Revoked keys keep their usage until they are purged.
    assert_eq!(key_usage(store, "k1", &[d1(), d2()]).await, [1, 0]);
    assert!(store.delete_key("k1").await.expect("purge"));
    assert_eq!(key_usage(store, "k1", &[d1(), d2()]).await, [0, 0]);
    assert_eq!(key_usage(store, "k2", &[d1(), d2()]).await, [0, 2]);
    // Another app (whose id starts with the deleted one's) and its key keep theirs.
    assert_eq!(app_usage(store, "a10", &[d1(), d2()]).await, [3, 0]);
    assert_eq!(key_usage(store, "k3", &[d1(), d2()]).await, [3, 0]);
}

/// A batch counts once however often it is sent (a write that timed out is sent again);
/// another batch with the same counts counts on its own.
async fn usage_batches_count_once(store: &dyn KeyStore) {
    let same = UsageCounts {
        keys: counts(&[("k1", d1(), 2), ("k1", d3(), 1)]),
        apps: counts(&[("a1", d1(), 3)]),
    };
    let first = fresh(&same);
    store
        .add_usage(std::slice::from_ref(&first))
        .await
        .expect("first");
    store
        .add_usage(std::slice::from_ref(&first))
        .await
        .expect("first again");
    assert_eq!(key_usage(store, "k1", &[d1(), d3()]).await, [2, 1]);
    assert_eq!(app_usage(store, "a1", &[d1()]).await, [3]);

    // Sent with a new batch, in either order, the applied one is skipped and the new one counts.
    let second = fresh(&same);
    store
        .add_usage(&[first.clone(), second.clone()])
        .await
        .expect("old and new");
    store.add_usage(&[second, first]).await.expect("both again");
    assert_eq!(key_usage(store, "k1", &[d1(), d3()]).await, [4, 2]);
    assert_eq!(app_usage(store, "a1", &[d1()]).await, [6]);
}

/// A batch far bigger than one Redis script goes out in chunks; sent twice, every count is
/// still there once.
async fn huge_usage_batch_counts_once(store: &dyn KeyStore) {
    let n = 3 * USAGE_CHUNK + 7;
    let count_of = |i: usize| u64::try_from(i % 5 + 1).expect("small");
    let keys = (0..n)
        .map(|i| (format!("k{i}"), d2().to_owned(), count_of(i)))
        .collect();
    let big = fresh(&UsageCounts {
        keys,
        apps: counts(&[("a1", d2(), 42)]),
    });
    store
        .add_usage(std::slice::from_ref(&big))
        .await
        .expect("big batch");
    store.add_usage(&[big]).await.expect("big batch again");
    for i in [
        0,
        1,
        USAGE_CHUNK - 1,
        USAGE_CHUNK,
        2 * USAGE_CHUNK + 3,
        n - 1,
    ] {
        let id = format!("k{i}");
        assert_eq!(key_usage(store, &id, &[d2()]).await, [count_of(i)], "{id}");
    }
    assert_eq!(app_usage(store, "a1", &[d2()]).await, [42]);
}

/// Counts stay readable for the admin API's longest read (366 days back); days past the
/// retention period are not stored at all.
async fn usage_retention(store: &dyn KeyStore) {
    let now = now_unix();
    let year_ago = utc_date(now - 366 * DAY);
    let too_old = utc_date(now - (USAGE_RETENTION_DAYS + 40) * DAY);
    let batch = UsageCounts {
        keys: counts(&[("k1", &year_ago, 4), ("k1", &too_old, 5), ("k1", d3(), 1)]),
        apps: counts(&[("a1", &too_old, 5)]),
    };
    store.add_usage(&[fresh(&batch)]).await.expect("usage");
    assert_eq!(
        key_usage(store, "k1", &[&too_old, &year_ago, d3()]).await,
        [0, 4, 1]
    );
    assert_eq!(app_usage(store, "a1", &[&too_old]).await, [0]);
}

fn credential(name: &str, created_at: u64) -> CredentialRecord {
    CredentialRecord {
        name: name.to_owned(),
        description: format!("{name} described"),
        sealed: format!("sealed-{name}"),
        masked: "abc******xyz".to_owned(),
        created_at,
        created_by: "admin".to_owned(),
        updated_at: created_at,
        updated_by: "admin".to_owned(),
        last_used_at: None,
    }
}

fn change_value(sealed: &str, expected: Option<&str>) -> CredentialChange {
    CredentialChange {
        value: Some((sealed.to_owned(), "new******new".to_owned())),
        description: None,
        at: 2_000,
        by: "alice".to_owned(),
        expected_sealed: expected.map(str::to_owned),
        announce: true,
    }
}

/// Credential records: conflicts, listing in pages with a filter, compare-and-set updates,
/// last-use times, deletes; each write with its audit event and its announcement on the feed.
async fn credentials_crud(store: &dyn KeyStore) {
    let mut feed = store.invalidations().expect("feed");
    let started = Instant::now();
    while !store.feed_live() && started.elapsed() < HANG {
        sleep(Duration::from_millis(10)).await;
    }
    let made = audit("credential.created", |c: &CredentialRecord| c.name.clone());
    for (i, name) in ["A_1", "b-2", "C_3", "d-4", "E_5"].iter().enumerate() {
        let at = 1_000 + u64::try_from(i).expect("small");
        store
            .create_credential_audited(&credential(name, at), Some(&made))
            .await
            .expect("create");
    }
    assert!(matches!(
        store
            .create_credential_audited(&credential("A_1", 9), Some(&made))
            .await,
        Err(StoreError::Conflict)
    ));
    let got = store
        .get_credential("A_1")
        .await
        .expect("get")
        .expect("stored");
    assert_eq!(got, credential("A_1", 1_000));
    assert_eq!(store.get_credential("nope").await.expect("get"), None);

    // Pages of two, keeping names with `_`: every match once, in creation order.
    let mut names = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = PageRequest {
            cursor: cursor.as_deref(),
            limit: 2,
        };
        let found = store
            .list_credentials(page, &|c: &CredentialRecord| c.name.contains('_'))
            .await
            .expect("list");
        names.extend(found.items.into_iter().map(|c| c.name));
        match found.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(names, ["A_1", "C_3", "E_5"]);

    let updated = audit("credential.updated", |c: &CredentialRecord| c.name.clone());
    let changed = store
        .update_credential_audited(
            "A_1",
            &change_value("sealed-2", Some("sealed-A_1")),
            Some(&updated),
        )
        .await
        .expect("update");
    assert_eq!(
        (
            changed.sealed.as_str(),
            changed.updated_by.as_str(),
            changed.updated_at
        ),
        ("sealed-2", "alice", 2_000)
    );
    assert_eq!(changed.description, "A_1 described");
    assert!(matches!(
        store
            .update_credential_audited(
                "A_1",
                &change_value("sealed-3", Some("sealed-A_1")),
                Some(&updated)
            )
            .await,
        Err(StoreError::VersionMismatch)
    ));
    assert!(matches!(
        store
            .update_credential_audited("nope", &change_value("x", None), Some(&updated))
            .await,
        Err(StoreError::NotFound)
    ));
    let stored = store
        .get_credential("A_1")
        .await
        .expect("get")
        .expect("stored");
    assert_eq!(stored.sealed, "sealed-2");
    // A rewrap keeps the plaintext: it is not announced.
    let quiet = CredentialChange {
        announce: false,
        ..change_value("sealed-4", Some("sealed-2"))
    };
    store
        .update_credential_audited("C_3", &quiet, Some(&updated))
        .await
        .expect_err("C_3 is not at sealed-2");
    store
        .update_credential_audited("A_1", &quiet, Some(&updated))
        .await
        .expect("quiet update");

    store
        .touch_credentials(&[("A_1".into(), 50), ("nope".into(), 60)])
        .await
        .expect("touch");
    store
        .touch_credentials(&[("A_1".into(), 40)])
        .await
        .expect("touch");
    let touched = store
        .get_credential("A_1")
        .await
        .expect("get")
        .expect("stored");
    assert_eq!(touched.last_used_at, Some(50), "never moves backwards");
    assert_eq!(store.get_credential("nope").await.expect("get"), None);

    let deleted = audit("credential.deleted", |c: &CredentialRecord| c.name.clone());
    let old = store
        .delete_credential_audited("b-2", Some(&deleted))
        .await
        .expect("delete");
    assert_eq!(old.map(|c| c.name), Some("b-2".to_owned()));
    assert_eq!(
        store
            .delete_credential_audited("b-2", Some(&deleted))
            .await
            .expect("delete"),
        None
    );
    assert_eq!(store.get_credential("b-2").await.expect("get"), None);
    let page = PageRequest {
        cursor: None,
        limit: 100,
    };
    let all = store.list_credentials(page, &|_| true).await.expect("list");
    assert_eq!(all.items.len(), 4);
    assert_eq!(all.items[0].last_used_at, Some(50), "listed with last use");

    let log = audit_log(store).await;
    let count = |action: &str| log.iter().filter(|(a, _)| a == action).count();
    assert_eq!(
        (
            count("credential.created"),
            count("credential.updated"),
            count("credential.deleted")
        ),
        (5, 2, 1),
        "{log:?}"
    );

    // Every write was announced by name (creations too: a miss may be cached).
    let mut heard = Vec::new();
    while heard.len() < 7 {
        match next_event(&mut feed, HANG).await {
            Invalidation::Credential(name) => heard.push(name),
            Invalidation::All => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(heard, ["A_1", "b-2", "C_3", "d-4", "E_5", "A_1", "b-2"]);
}

/// Each suite function becomes one test per store, each with a fresh store.
macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod embedded_suite {
            $(
                #[tokio::test]
                async fn $name() {
                    let (_dir, store) = super::embedded_store();
                    super::$name(&store).await;
                }
            )*
        }
        mod redis_suite {
            $(
                #[tokio::test]
                async fn $name() {
                    let (_server, store) = super::redis_store().await;
                    super::$name(&store).await;
                }
            )*
        }
        mod cluster_suite {
            $(
                #[tokio::test]
                async fn $name() {
                    let (_cluster, store) = super::cluster_store().await;
                    super::$name(&store).await;
                }
            )*
        }
    };
}

suite!(
    apps_crud,
    app_name_conflicts,
    keys_crud,
    create_key_needs_app,
    delete_app_revokes_its_keys,
    key_changes_apply_to_the_stored_key,
    writes_keep_their_audit_event,
    roll_is_one_step,
    touch_keys_rules,
    records_round_trip,
    usage_adds_up,
    usage_rejects_out_of_range_counts,
    delete_key_deletes_its_usage,
    delete_app_deletes_its_usage,
    usage_batches_count_once,
    huge_usage_batch_counts_once,
    usage_retention,
    credentials_crud,
    token_usage_is_kept_per_measure,
    token_ledger_counts_each_batch_once,
);

fn embedded_store() -> (tempfile::TempDir, EmbeddedStore) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedStore::open(&dir.path().join("data")).expect("open");
    (dir, store)
}

async fn redis_store() -> (RedisServer, RedisStore) {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url(), OP_TIMEOUT)
        .await
        .expect("connect");
    (server, store)
}

/// A store on a fresh cluster, connected through one node (the client finds the others).
async fn cluster_store() -> (RedisCluster, RedisStore) {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .expect("cluster");
    let store = RedisStore::connect(&cluster.url(), OP_TIMEOUT)
        .await
        .expect("connect");
    (cluster, store)
}

// ---------------------------------------------------------------- embedded only

/// The embedded store's feed carries its own commits, each as it commits (so a write that
/// outlives its caller still reaches the cache); creations announce nothing.
#[tokio::test]
async fn embedded_feed_carries_its_own_commits() {
    let (_dir, store) = embedded_store();
    let mut feed = store.invalidations().expect("a feed of its own writes");
    store.create_app(&app("a1", "one", 1)).await.expect("app");
    store.create_key(&key("k1", "a1", 1)).await.expect("key");
    replace_app(&store, &app("a1", "uno", 1))
        .await
        .expect("update");
    assert_eq!(
        next_event(&mut feed, HANG).await,
        Invalidation::App("a1".into())
    );
    store
        .update_key("k1", &KeyChange::Disable)
        .await
        .expect("disable");
    assert_eq!(
        next_event(&mut feed, HANG).await,
        Invalidation::Key("k1".into())
    );
    assert!(store.delete_app("a1", "ops", None).await.expect("delete"));
    assert_eq!(
        next_event(&mut feed, HANG).await,
        Invalidation::App("a1".into())
    );
}

#[tokio::test]
async fn embedded_survives_reopen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("nested").join("data");
    {
        let store = EmbeddedStore::open(&path).expect("open");
        store.create_app(&app("a1", "One", 1)).await.expect("app");
        store.create_app(&app("a2", "Two", 2)).await.expect("app");
        store.create_key(&key("k1", "a1", 1)).await.expect("key");
        store.create_key(&key("k2", "a2", 2)).await.expect("key");
        store
            .touch_keys(&[("k1".to_owned(), 42)])
            .await
            .expect("touch");
    }
    assert!(path.join("scopegate.redb").is_file());

    let store = EmbeddedStore::open(&path).expect("reopen");
    assert_eq!(
        all_apps(&store).await,
        [app("a1", "One", 1), app("a2", "Two", 2)]
    );
    let k1 = KeyRecord {
        last_used_at: Some(42),
        ..key("k1", "a1", 1)
    };
    assert_eq!(
        list_all_keys(&store, None).await.expect("keys"),
        [k1, key("k2", "a2", 2)]
    );
    // Name claims survived too.
    assert!(matches!(
        store.create_app(&app("a3", "one", 3)).await,
        Err(StoreError::Conflict)
    ));
}

/// A file written by the version before usage counts (no `usage` table) opens, keeps its
/// records, and takes counts that survive a reopen.
#[tokio::test]
async fn embedded_opens_a_file_without_usage_table() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("data");
    std::fs::create_dir_all(&path).expect("dir");
    {
        // The previous version's tables, written with redb directly.
        const APPS: redb::TableDefinition<'_, &str, &[u8]> = redb::TableDefinition::new("apps");
        const APP_NAMES: redb::TableDefinition<'_, &str, &str> =
            redb::TableDefinition::new("app_names");
        const KEYS: redb::TableDefinition<'_, &str, &[u8]> = redb::TableDefinition::new("keys");
        const LAST_USED: redb::TableDefinition<'_, &str, u64> =
            redb::TableDefinition::new("last_used");
        let db = redb::Database::create(path.join("scopegate.redb")).expect("create");
        let tx = db.begin_write().expect("write");
        {
            let app_json = serde_json::to_vec(&app("a1", "One", 1)).expect("json");
            let key_json = serde_json::to_vec(&key("k1", "a1", 1)).expect("json");
            let mut apps = tx.open_table(APPS).expect("apps");
            apps.insert("a1", app_json.as_slice()).expect("insert");
            let mut names = tx.open_table(APP_NAMES).expect("names");
            names.insert("one", "a1").expect("insert");
            let mut keys = tx.open_table(KEYS).expect("keys");
            keys.insert("k1", key_json.as_slice()).expect("insert");
            let mut last_used = tx.open_table(LAST_USED).expect("last_used");
            last_used.insert("k1", 42).expect("insert");
        }
        tx.commit().expect("commit");
    }

    {
        let store = EmbeddedStore::open(&path).expect("open old file");
        assert_eq!(all_apps(&store).await, [app("a1", "One", 1)]);
        let k1 = store.get_key("k1").await.expect("key");
        assert_eq!(k1.and_then(|k| k.last_used_at), Some(42));
        assert_eq!(key_usage(&store, "k1", &[d1()]).await, [0]);
        let batch = UsageCounts {
            keys: counts(&[("k1", d1(), 2)]),
            apps: counts(&[("a1", d1(), 2)]),
        };
        store.add_usage(&[fresh(&batch)]).await.expect("usage");
    }
    let store = EmbeddedStore::open(&path).expect("reopen");
    assert_eq!(key_usage(&store, "k1", &[d1()]).await, [2]);
    assert_eq!(app_usage(&store, "a1", &[d1()]).await, [2]);
}

/// Writes keep the file bounded: rows past retention and batch ids older than a day go, a
/// bounded share per write; recent ones stay and are honoured.
#[tokio::test]
async fn embedded_prunes_old_rows_and_batch_ids() {
    const USAGE: redb::TableDefinition<'_, &str, u64> = redb::TableDefinition::new("usage");
    const BATCHES: redb::TableDefinition<'_, &str, u64> =
        redb::TableDefinition::new("usage_batches");
    const BATCH_AGES: redb::TableDefinition<'_, (u64, &str), ()> =
        redb::TableDefinition::new("usage_batch_ages");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("data");
    std::fs::create_dir_all(&path).expect("dir");
    let file = path.join("scopegate.redb");
    let now = now_unix();
    let too_old = utc_date(now - (USAGE_RETENTION_DAYS + 1) * DAY);
    let old_row = format!("k\0k1\0{too_old}");
    let kept_row = format!("k\0k1\0{}", d1());
    let (old_id, recent_id) = ("old-batch", "recent-batch");
    {
        let db = redb::Database::create(&file).expect("create");
        let tx = db.begin_write().expect("write");
        {
            let mut usage = tx.open_table(USAGE).expect("usage");
            usage.insert(old_row.as_str(), 9).expect("insert");
            usage.insert(kept_row.as_str(), 2).expect("insert");
            let mut ids = tx.open_table(BATCHES).expect("batches");
            let mut ages = tx.open_table(BATCH_AGES).expect("ages");
            for (id, at) in [(old_id, now - 2 * DAY), (recent_id, now - 60)] {
                ids.insert(id, at).expect("insert");
                ages.insert((at, id), ()).expect("insert");
            }
        }
        tx.commit().expect("commit");
    }

    {
        let store = EmbeddedStore::open(&path).expect("open");
        // A retry of the recent batch is recognised (not counted again) ...
        let retry = UsageBatch {
            id: recent_id.to_owned(),
            counts: UsageCounts {
                keys: counts(&[("k1", d1(), 2)]),
                apps: Vec::new(),
            },
        };
        store.add_usage(&[retry]).await.expect("retry");
        assert_eq!(key_usage(&store, "k1", &[d1()]).await, [2]);
        // ... and that write pruned what is past its time.
        assert_eq!(key_usage(&store, "k1", &[&too_old]).await, [0]);
    }

    use redb::{ReadableDatabase, ReadableTableMetadata};
    let db = redb::Database::open(&file).expect("reopen");
    let tx = db.begin_read().expect("read");
    let usage = tx.open_table(USAGE).expect("usage");
    assert!(usage.get(old_row.as_str()).expect("get").is_none());
    assert_eq!(
        usage
            .get(kept_row.as_str())
            .expect("get")
            .map(|v| v.value()),
        Some(2)
    );
    let ids = tx.open_table(BATCHES).expect("batches");
    assert!(ids.get(old_id).expect("get").is_none());
    assert!(ids.get(recent_id).expect("get").is_some());
    let ages = tx.open_table(BATCH_AGES).expect("ages");
    assert_eq!(ages.len().expect("len"), 1);
}

// ---------------------------------------------------------------- redis only

/// Each chunk of a batch is its own idempotent unit: with one chunk already applied (its
/// marker set), sending the batch applies the others only.
#[tokio::test]
async fn redis_usage_chunks_apply_one_by_one() {
    let (server, store) = redis_store().await;
    let mut conn = common::instances::redis_conn(&server.url()).await;
    let keys = (0..2 * USAGE_CHUNK + 1)
        .map(|i| (format!("k{i}"), d3().to_owned(), 1))
        .collect();
    let big = fresh(&UsageCounts {
        keys,
        apps: Vec::new(),
    });
    let _: () = redis::cmd("SET")
        .arg(format!("sg:usage:batch:{}:1", big.id))
        .arg(1)
        .query_async(&mut conn)
        .await
        .expect("set");
    store
        .add_usage(std::slice::from_ref(&big))
        .await
        .expect("usage");
    store.add_usage(&[big]).await.expect("usage again");
    let first_of_chunk = |n: usize| format!("k{}", n * USAGE_CHUNK);
    assert_eq!(key_usage(&store, &first_of_chunk(0), &[d3()]).await, [1]);
    assert_eq!(key_usage(&store, &first_of_chunk(1), &[d3()]).await, [0]);
    assert_eq!(key_usage(&store, &first_of_chunk(2), &[d3()]).await, [1]);
}

/// Hashes of the layout before monthly hashes (`sg:usage:key:{id}`) are still read, added to
/// the monthly counts, and deleted with their key.
#[tokio::test]
async fn redis_reads_and_deletes_the_old_usage_layout() {
    let (server, store) = redis_store().await;
    let mut conn = common::instances::redis_conn(&server.url()).await;
    store.create_app(&app("a1", "one", 1)).await.expect("app");
    store.create_key(&key("k1", "a1", 1)).await.expect("key");
    let _: () = redis::cmd("HSET")
        .arg("sg:usage:key:k1")
        .arg(d1())
        .arg(5)
        .query_async(&mut conn)
        .await
        .expect("hset");
    let batch = UsageCounts {
        keys: counts(&[("k1", d1(), 2), ("k1", d3(), 1)]),
        apps: Vec::new(),
    };
    store.add_usage(&[fresh(&batch)]).await.expect("usage");
    assert_eq!(
        key_usage(&store, "k1", &[d1(), d2(), d3()]).await,
        [7, 0, 1]
    );

    assert!(store.delete_key("k1").await.expect("delete"));
    let left: Vec<String> = redis::cmd("KEYS")
        .arg("sg:usage:key:*")
        .query_async(&mut conn)
        .await
        .expect("keys");
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Waits until `n` connections subscribe to the invalidation channel: the feed subscribes
/// shortly after `invalidations()` returns, and events sent before that are not delivered.
async fn wait_subscribed(server: &RedisServer, n: u64) {
    common::instances::wait_subscribers(&server.url(), n).await;
}

/// Waits until the store's feed is subscribed (events sent before that are not delivered).
async fn wait_live(store: &RedisStore) {
    let deadline = Instant::now() + HANG;
    while !store.feed_live() {
        assert!(Instant::now() < deadline, "the feed never subscribed");
        sleep(Duration::from_millis(20)).await;
    }
}

async fn next_event(rx: &mut mpsc::Receiver<Invalidation>, within: Duration) -> Invalidation {
    timeout(within, rx.recv())
        .await
        .expect("no invalidation in time")
        .expect("feed closed")
}

#[tokio::test]
async fn redis_invalidations_reach_other_instances() {
    let server = RedisServer::start();
    invalidations_reach_other_instances(&server.url()).await;
}

/// On a cluster the writer's scripts PUBLISH on the master of the gateway's slot, and the
/// reader hears it on whichever node its feed subscribed to.
#[tokio::test]
async fn cluster_invalidations_reach_other_instances() {
    let (cluster, _) = cluster_store().await;
    invalidations_reach_other_instances(&cluster.url()).await;
}

/// The feed's node dies (a replica, so the data stays where it is): the feed subscribes on
/// another node, announces the gap, and hears writes again.
#[tokio::test]
async fn cluster_feed_moves_to_another_node_when_its_node_dies() {
    let (mut cluster, writer) = cluster_store().await;
    writer.create_app(&app("a1", "one", 1)).await.expect("app");
    let reader = RedisStore::connect(&cluster.url(), OP_TIMEOUT)
        .await
        .expect("reader");
    let mut rx = reader.invalidations().expect("redis has a feed");
    wait_live(&reader).await;
    let subscribed = cluster
        .live_ports()
        .into_iter()
        .find(|&port| {
            common::cluster::cli(port, &["PUBSUB", "NUMSUB", "sg:invalidate"])
                .is_some_and(|out| out.lines().nth(1).map(str::trim) == Some("1"))
        })
        .expect("one node holds the subscription");
    cluster.kill(subscribed);

    assert_eq!(next_event(&mut rx, HANG).await, Invalidation::All);
    wait_live(&reader).await;
    let renamed = app("a1", "uno", 1);
    eventually(|| replace_app(&writer, &renamed)).await;
    assert_eq!(
        next_event(&mut rx, HANG).await,
        Invalidation::App("a1".into())
    );
}

/// Every key the store writes on a cluster carries the one hash tag: all of them sit on the
/// master of that slot, under `sg:{sg:}`.
#[tokio::test]
async fn cluster_keys_share_one_slot() {
    let (cluster, store) = cluster_store().await;
    store.create_app(&app("a1", "one", 1)).await.expect("app");
    let mut k1 = key("k1", "a1", 1);
    k1.expires_at = Some(now_unix() + DAY);
    store.create_key(&k1).await.expect("key");
    store
        .touch_keys(&[("k1".to_owned(), now_unix())])
        .await
        .expect("touch");
    let batch = UsageCounts {
        keys: counts(&[("k1", d3(), 1)]),
        apps: counts(&[("a1", d3(), 1)]),
    };
    store.add_usage(&[fresh(&batch)]).await.expect("usage");
    assert!(delete_app_fully(&store, "a1").await);
    let holder = cluster.master_of("sg:{sg:}appidx");
    for port in cluster.live_ports() {
        let keys = common::cluster::cli(port, &["--scan"]).expect("scan");
        let keys: Vec<&str> = keys.lines().collect();
        let is_master =
            common::cluster::cli(port, &["ROLE"]).is_some_and(|role| role.starts_with("master"));
        if port == holder {
            assert!(keys.len() > 3, "{keys:?}");
        } else if is_master {
            assert!(keys.is_empty(), "node {port} holds {keys:?}");
        }
        assert!(keys.iter().all(|k| k.starts_with("sg:{sg:}")), "{keys:?}");
    }
}

async fn invalidations_reach_other_instances(url: &str) {
    let writer = RedisStore::connect(url, OP_TIMEOUT).await.expect("writer");
    let reader = RedisStore::connect(url, OP_TIMEOUT).await.expect("reader");
    let mut rx = reader.invalidations().expect("redis has a feed");
    wait_live(&reader).await;
    let second = Duration::from_secs(1);

    writer.create_app(&app("a1", "one", 1)).await.expect("app");
    writer.create_key(&key("k1", "a1", 1)).await.expect("key");
    writer.create_key(&key("k2", "a1", 2)).await.expect("key");
    replace_app(&writer, &app("a1", "uno", 1))
        .await
        .expect("update");
    // Creations announce nothing: nothing can be cached about a record that did not exist.
    assert_eq!(
        next_event(&mut rx, second).await,
        Invalidation::App("a1".into())
    );
    assert!(writer.delete_key("k1").await.expect("delete key"));
    assert_eq!(
        next_event(&mut rx, second).await,
        Invalidation::Key("k1".into())
    );
    // Deleting an app announces the app alone: its keys then resolve to no app everywhere,
    // so one message covers them however many there are.
    assert!(delete_app_fully(&writer, "a1").await);
    assert_eq!(
        next_event(&mut rx, second).await,
        Invalidation::App("a1".into())
    );
    // Failed or no-op writes announce nothing.
    assert!(!writer.delete_key("k1").await.expect("delete again"));
    assert!(replace_app(&writer, &app("a1", "x", 1)).await.is_err());
    assert!(timeout(Duration::from_millis(200), rx.recv())
        .await
        .is_err());
}

#[tokio::test]
async fn redis_connect_fails_when_nothing_listens() {
    let mut server = RedisServer::start();
    server.stop();
    let result = timeout(HANG, RedisStore::connect(&server.url(), OP_TIMEOUT))
        .await
        .expect("connect hung");
    assert!(matches!(result, Err(StoreError::Unavailable(_))));
}

#[tokio::test]
async fn redis_outage_fails_fast_and_recovers() {
    let mut server = RedisServer::start_persistent();
    let store = RedisStore::connect(&server.url(), OP_TIMEOUT)
        .await
        .expect("connect");
    let mut rx = store.invalidations().expect("feed");
    wait_subscribed(&server, 1).await;
    store.create_app(&app("a1", "one", 1)).await.expect("app");
    store.create_key(&key("k1", "a1", 1)).await.expect("key");

    server.stop();
    assert_unavailable(store.get_app("a1").await_bounded().await);
    assert_unavailable(store.ping().await_bounded().await);
    assert_unavailable(list_all_keys(&store, None).await_bounded().await);
    assert_unavailable(
        store
            .touch_keys(&[("k1".to_owned(), 9)])
            .await_bounded()
            .await,
    );
    assert_unavailable(store.delete_key("k1").await_bounded().await);

    server.start_again();
    // The same instance heals by itself; data survived (append-only file).
    let app_back = eventually(|| store.get_app("a1")).await;
    assert_eq!(app_back, Some(app("a1", "one", 1)));
    assert_eq!(
        store.get_key("k1").await.expect("key").map(|k| k.id),
        Some("k1".to_owned())
    );
    // The feed says it may have missed events, then carries new ones.
    assert_eq!(next_event(&mut rx, HANG).await, Invalidation::All);
    replace_app(&store, &app("a1", "uno", 1))
        .await
        .expect("update");
    assert_eq!(
        next_event(&mut rx, Duration::from_secs(1)).await,
        Invalidation::App("a1".into())
    );
}

#[tokio::test]
async fn redis_usage_outage_and_restart() {
    let mut server = RedisServer::start_persistent();
    let store = RedisStore::connect(&server.url(), OP_TIMEOUT)
        .await
        .expect("connect");
    let counts = UsageCounts {
        keys: counts(&[("k1", d1(), 3)]),
        apps: counts(&[("a1", d1(), 3)]),
    };
    store.add_usage(&[fresh(&counts)]).await.expect("usage");

    server.stop();
    let failed = fresh(&counts);
    assert_unavailable(
        store
            .add_usage(std::slice::from_ref(&failed))
            .await_bounded()
            .await,
    );
    assert_unavailable(
        store
            .usage(UsageSubject::Key("k1"), &dates(&[d1()]))
            .await_bounded()
            .await,
    );

    server.start_again();
    // Heals by itself; counts written before the crash survived (append-only file) and the
    // failed batch left nothing behind, so its retry counts.
    let first_day = dates(&[d1()]);
    let back = eventually(|| store.usage(UsageSubject::Key("k1"), &first_day)).await;
    assert_eq!(back, [3]);
    store
        .add_usage(&[failed])
        .await
        .expect("retry after restart");
    assert_eq!(key_usage(&store, "k1", &[d1()]).await, [6]);
    assert_eq!(app_usage(&store, "a1", &[d1()]).await, [6]);
}

fn assert_unavailable<T: std::fmt::Debug>(result: Result<T, StoreError>) {
    assert!(
        matches!(result, Err(StoreError::Unavailable(_))),
        "expected Unavailable, got {result:?}"
    );
}

/// Retries `op` until it succeeds, for up to [`HANG`].
async fn eventually<T, F, Fut>(mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let deadline = Instant::now() + HANG;
    loop {
        match op().await {
            Ok(value) => return value,
            Err(e) if Instant::now() > deadline => panic!("store did not recover: {e}"),
            Err(_) => sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Fails the test on a hang instead of waiting forever.
trait AwaitBounded: std::future::Future + Sized {
    async fn await_bounded(self) -> Self::Output {
        timeout(HANG, self).await.expect("store call hung")
    }
}

impl<F: std::future::Future> AwaitBounded for F {}

/// The documented key layout, and that deletes leave nothing behind (no orphan name claims,
/// sets or last-use fields, also for touched ids that never existed).
#[tokio::test]
async fn redis_layout_and_cleanup() {
    let (server, store) = redis_store().await;
    let mut conn = common::instances::redis_conn(&server.url()).await;
    store.create_app(&app("a1", "MyApp", 1)).await.expect("app");
    store.create_key(&key("k1", "a1", 1)).await.expect("key");
    store
        .touch_keys(&[("k1".to_owned(), 5), ("ghost".to_owned(), 5)])
        .await
        .expect("touch");
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .expect("resetstat");
    let batch = fresh(&UsageCounts {
        keys: counts(&[("k1", d1(), 2), ("k1", d2(), 3)]),
        apps: counts(&[("a1", d1(), 5)]),
    });
    store
        .add_usage(std::slice::from_ref(&batch))
        .await
        .expect("usage");
    // One script: the batch marker and the HINCRBYs (no MULTI/EXEC any more).
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .expect("info");
    let calls = |name: &str| {
        stats
            .lines()
            .find_map(|line| line.strip_prefix(&format!("cmdstat_{name}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert_eq!(
        (
            calls("eval"),
            calls("set"),
            calls("hincrby"),
            calls("multi")
        ),
        (1, 1, 3, 0),
        "{stats}"
    );

    // d1 and d2 are the last days of last month: one hash per subject for that month.
    let month = &d1()[..7];
    let marker = format!("sg:usage:batch:{}:0", batch.id);
    let key_hash = format!("sg:usage:key:k1:{month}");
    let app_hash = format!("sg:usage:app:a1:{month}");
    let mut expected = vec![
        "sg:app:a1".to_owned(),
        "sg:appidx".to_owned(),
        "sg:appkeyidx:a1".to_owned(),
        "sg:appname:myapp".to_owned(),
        // The deployment's marker: lookups believe "no such key" only where it is.
        "sg:deployment".to_owned(),
        "sg:key:k1".to_owned(),
        "sg:keyidx".to_owned(),
        "sg:last_used".to_owned(),
        app_hash.clone(),
        marker.clone(),
        key_hash.clone(),
    ];
    expected.sort();
    assert_eq!(all_keys(&mut conn).await, expected);
    let mut per_day: Vec<(String, u64)> = redis::cmd("HGETALL")
        .arg(&key_hash)
        .query_async(&mut conn)
        .await
        .expect("hgetall");
    per_day.sort();
    assert_eq!(per_day, [(d1().to_owned(), 2), (d2().to_owned(), 3)]);
    let claimed: String = redis::cmd("GET")
        .arg("sg:appname:myapp")
        .query_async(&mut conn)
        .await
        .expect("get");
    assert_eq!(claimed, "a1");
    let touched: Vec<String> = redis::cmd("HKEYS")
        .arg("sg:last_used")
        .query_async(&mut conn)
        .await
        .expect("hkeys");
    assert_eq!(touched, ["k1"]);

    // Retention: a month's hash lives 400 days past the month's end, never for ever; the
    // marker a day.
    let max_hash_ttl = i64::try_from((USAGE_RETENTION_DAYS + 31) * DAY).expect("fits");
    for hash in [&key_hash, &app_hash] {
        let ttl = ttl_of(&mut conn, hash).await;
        assert!(ttl > 0 && ttl <= max_hash_ttl, "{hash}: TTL {ttl}");
    }
    let ttl = ttl_of(&mut conn, &marker).await;
    let max_marker_ttl = i64::try_from(USAGE_BATCH_MEMORY_SECS).expect("fits");
    assert!(ttl > 0 && ttl <= max_marker_ttl, "marker TTL {ttl}");

    assert!(delete_app_fully(&store, "a1").await);
    // The revoked key stays (with its usage) until purged; then only the batch marker (which
    // expires by itself) and the deployment's marker are left.
    assert!(all_keys(&mut conn).await.contains(&"sg:revoked".to_owned()));
    assert!(store.delete_key("k1").await.expect("purge"));
    assert_eq!(
        all_keys(&mut conn).await,
        ["sg:deployment".to_owned(), marker.clone()]
    );

    // Counts for ids that do not exist are stored anyway (the documented choice): cheap
    // orphans, which is why this comes after the cleanup check. They expire like any other.
    let orphan = fresh(&UsageCounts {
        keys: counts(&[("ghost", d3(), 1)]),
        apps: Vec::new(),
    });
    store
        .add_usage(std::slice::from_ref(&orphan))
        .await
        .expect("orphan usage");
    let ghost = format!("sg:usage:key:ghost:{}", &d3()[..7]);
    let mut expected = vec![
        "sg:deployment".to_owned(),
        marker,
        format!("sg:usage:batch:{}:0", orphan.id),
        ghost.clone(),
    ];
    expected.sort();
    assert_eq!(all_keys(&mut conn).await, expected);
    assert!(ttl_of(&mut conn, &ghost).await > 0);
}

async fn all_keys(conn: &mut redis::aio::MultiplexedConnection) -> Vec<String> {
    let mut all: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(conn)
        .await
        .expect("keys");
    all.sort();
    all
}

/// Seconds to live of a Redis key (-1: no expiry, -2: no such key).
async fn ttl_of(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("TTL")
        .arg(key)
        .query_async(conn)
        .await
        .expect("ttl")
}

/// Data an earlier version wrote (sets of ids instead of sorted listing indexes) is indexed by
/// `upgrade`, in bounded chunks, and the old sets go; records are read as they were.
#[tokio::test]
async fn redis_upgrade_indexes_the_layout_of_earlier_versions() {
    let (server, store) = redis_store().await;
    let mut conn = common::instances::redis_conn(&server.url()).await;
    // The old layout, written the way the old scripts did, for 1200 keys (more than one chunk).
    let old_app = serde_json::json!({"id": "a1", "name": "old", "scopes": ["read"],
        "rate_limit": null, "created_at": 5, "created_by": "admin"});
    let mut pipe = redis::pipe();
    pipe.cmd("SET")
        .arg("sg:app:a1")
        .arg(old_app.to_string())
        .ignore();
    pipe.cmd("SET").arg("sg:appname:old").arg("a1").ignore();
    pipe.cmd("SADD").arg("sg:apps").arg("a1").ignore();
    for i in 0..1200u64 {
        let id = format!("k{i:05}");
        let mut record = serde_json::to_value(key(&id, "a1", 10 + i)).expect("json");
        record
            .as_object_mut()
            .expect("object")
            .remove("allowed_ips");
        pipe.cmd("SET")
            .arg(format!("sg:key:{id}"))
            .arg(record.to_string())
            .ignore();
        pipe.cmd("SADD").arg("sg:keys").arg(&id).ignore();
        pipe.cmd("SADD").arg("sg:appkeys:a1").arg(&id).ignore();
    }
    let () = pipe.query_async(&mut conn).await.expect("seed");

    assert!(
        all_apps(&store).await.is_empty(),
        "not listed before the upgrade"
    );
    assert_eq!(store.upgrade().await.expect("upgrade"), 1201);
    assert_eq!(ids_of_apps(&all_apps(&store).await), ["a1"]);
    let keys = list_all_keys(&store, Some("a1")).await.expect("keys");
    assert_eq!(keys.len(), 1200);
    assert_eq!(
        keys[0],
        key("k00000", "a1", 10),
        "in creation order, read as written"
    );
    for old in ["sg:apps", "sg:keys", "sg:appkeys:a1"] {
        let exists: bool = redis::cmd("EXISTS")
            .arg(old)
            .query_async(&mut conn)
            .await
            .expect("exists");
        assert!(!exists, "{old} left behind");
    }
    assert_eq!(store.upgrade().await.expect("again"), 0, "nothing twice");
}
