//! Bounded store work with 200 000 keys in one app: listings page through it in small store
//! commands (each answering within 2 s), other callers' uncached keys keep authenticating
//! meanwhile, and deleting the app succeeds, refuses its keys at once, and marks them revoked
//! in chunks afterwards.

mod common;

use common::gateway::{deploy_at, TestGateway};
use common::instances::{gateway_on_url, redis_conn};
use common::redis::RedisServer;
use common::upstream::Upstream;
use futures_util::{stream, StreamExt};
use http::Method;
use scopegate::auth::key;
use scopegate::store::prelude::*;
use scopegate::store::RedisStore;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

const SEEDED: usize = 200_000;
/// The bound for one listing call.
const LISTING_WITHIN: Duration = Duration::from_secs(2);

/// Writes `SEEDED` keys of `app` straight through the store, many at a time.
async fn seed(redis: &RedisServer, app: &str) {
    let store = Arc::new(
        RedisStore::connect(&redis.url(), Duration::from_secs(10))
            .await
            .expect("store"),
    );
    let started = Instant::now();
    stream::iter(0..SEEDED)
        .for_each_concurrent(256, |i| {
            let store = store.clone();
            async move {
                let record = key::generate().record(app, &format!("bulk {i}"), "seed", None);
                store.create_key(&record).await.expect("seed key");
            }
        })
        .await;
    println!("seeded {SEEDED} keys in {:?}", started.elapsed());
}

async fn timed_admin(g: &TestGateway, path: &str) -> (common::http::Answer, Duration) {
    let started = Instant::now();
    let answer = g.admin(Method::GET, path, None).await;
    let took = started.elapsed();
    assert_eq!(answer.status, 200, "{path}: {:?}", answer.body);
    assert!(took < LISTING_WITHIN, "{path} took {took:?}");
    (answer, took)
}

fn next_link(answer: &common::http::Answer) -> Option<String> {
    let link = answer.headers.get("link")?.to_str().ok()?;
    let start = link.find('<')? + 1;
    let end = link.find('>')?;
    Some(link[start..end].to_owned())
}

/// Authenticates a fresh (uncached) key of another app again and again until `stop`, counting
/// answers other than 200.
fn keep_authenticating(
    g: &TestGateway,
    keys: Vec<String>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(usize, usize)> {
    let proxy = g.proxy;
    tokio::spawn(async move {
        let (mut ok, mut failed) = (0, 0);
        for key in keys.iter().cycle() {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            if deploy_at(proxy, key).await == 200 {
                ok += 1;
            } else {
                failed += 1;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (ok, failed)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_thousand_keys_list_in_pages_and_their_app_deletes_at_once() {
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    // A short cache ttl, so the other app's keys keep going back to the store.
    let g = gateway_on_url(&redis.url(), &upstream, |y| {
        y.replace("ttl: 30s", "ttl: 100ms")
    })
    .await;
    let big = g.create_app("big", &["deploy_tool"]).await;
    let (_, big_key) = g.create_key(&big, None).await;
    let other = g.create_app("other", &["deploy_tool"]).await;
    let mut other_keys = Vec::new();
    for _ in 0..20 {
        other_keys.push(g.create_key(&other, None).await.1);
    }
    seed(&redis, &big).await;

    let stop = Arc::new(AtomicBool::new(false));
    let auth = keep_authenticating(&g, other_keys.clone(), stop.clone());

    // Every page of the big app is one small read; pages follow each other without overlap.
    let (first, took) = timed_admin(&g, &format!("/v1/apps/{big}/keys?limit=1000")).await;
    println!("first page of 1000 keys of {SEEDED}: {took:?}");
    let items = first.json();
    assert_eq!(items.as_array().map(Vec::len), Some(1000));
    let mut seen: std::collections::HashSet<String> = items
        .as_array()
        .into_iter()
        .flatten()
        .map(|k| k["id"].as_str().expect("id").to_owned())
        .collect();
    let mut next = next_link(&first).expect("a Link to the next page");
    for _ in 0..5 {
        let (page, _) = timed_admin(&g, &next).await;
        for k in page.json().as_array().expect("array") {
            assert!(
                seen.insert(k["id"].as_str().expect("id").to_owned()),
                "page overlap"
            );
            assert!(k.get("key").is_none(), "a listing never shows the key");
        }
        next = next_link(&page).expect("more pages");
    }
    // A filter that matches nothing scans a bounded part, answers, and says where to go on.
    let (none, took) = timed_admin(&g, "/v1/keys?search=no-such-name&limit=1000").await;
    println!("search matching nothing over {SEEDED} keys, one call: {took:?}");
    assert_eq!(none.json(), serde_json::json!([]));
    assert!(
        next_link(&none).is_some(),
        "the scan stopped early, so more may remain"
    );
    let (all, took) = timed_admin(&g, "/v1/keys?limit=1000").await;
    println!("all keys, first page: {took:?}");
    assert_eq!(all.json().as_array().map(Vec::len), Some(1000));

    // Deleting the app answers at once and its keys stop working at once.
    assert_eq!(g.deploy(&big_key).await, 200);
    let started = Instant::now();
    let deleted = g
        .admin(Method::DELETE, &format!("/v1/apps/{big}"), None)
        .await;
    let took = started.elapsed();
    assert_eq!(deleted.status, 204, "{:?}", deleted.body);
    assert!(took < LISTING_WITHIN, "delete took {took:?}");
    println!("deleting the app with {SEEDED} keys answered in {took:?}");
    assert_eq!(g.deploy(&big_key).await, 401);
    let listing = g
        .admin(Method::GET, &format!("/v1/apps/{big}/keys"), None)
        .await;
    assert_eq!(listing.status, 404);

    // The keys are marked revoked in chunks, in the background, and stay listed as revoked.
    let mut conn = redis_conn(&redis.url()).await;
    let started = Instant::now();
    loop {
        let left: usize = redis::cmd("ZCARD")
            .arg(format!("sg:appkeyidx:{big}"))
            .query_async(&mut conn)
            .await
            .expect("zcard");
        let pending: usize = redis::cmd("HLEN")
            .arg("sg:deleted_apps")
            .query_async(&mut conn)
            .await
            .expect("hlen");
        if left == 0 && pending == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{left} keys still not revoked"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "revoked {SEEDED} keys of the deleted app in {:?}",
        started.elapsed()
    );
    let revoked: usize = redis::cmd("ZCARD")
        .arg("sg:revoked")
        .query_async(&mut conn)
        .await
        .expect("zcard");
    assert_eq!(
        revoked,
        SEEDED + 1,
        "every key of the deleted app is revoked"
    );
    let (page, _) = timed_admin(&g, "/v1/keys?status=revoked&limit=10").await;
    let page = page.json();
    assert_eq!(page.as_array().map(Vec::len), Some(10));
    assert!(page
        .as_array()
        .into_iter()
        .flatten()
        .all(|k| k["status"] == "revoked" && k["revoked_by"] == "admin"));
    let (page, _) = timed_admin(&g, "/v1/keys?status=active&limit=1000").await;
    assert_eq!(
        page.json().as_array().map(Vec::len),
        Some(other_keys.len()),
        "only the other app's keys are active"
    );

    stop.store(true, Ordering::SeqCst);
    let (ok, failed) = auth.await.expect("auth task");
    println!("other app's keys during all this: {ok} answered 200, {failed} did not");
    assert!(ok > 0);
    assert_eq!(
        failed, 0,
        "an uncached key was refused while the big app was listed or deleted"
    );
}
