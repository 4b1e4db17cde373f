//! The key lifecycle over real sockets, on both stores: revoke keeps the record, disable and
//! enable, roll with a grace period, the expiry policy, IP allowlists (also through trusted
//! proxies), and purging revoked keys after their retention. Propagation of disable, roll and
//! revoke to a second instance is checked on Redis.

mod common;

use bytes::Bytes;
use common::gateway::TestGateway;
use common::http::{send, Answer};
use common::instances::{gateway_on_url, wait_subscribers};
use common::redis::RedisServer;
use common::upstream::Upstream;
use http::Method;
use serde_json::json;
use std::time::Duration;
use tokio::time::Instant;

/// The contract's bound for a change to reach every instance.
const PROPAGATION: Duration = Duration::from_secs(1);

async fn call(g: &TestGateway, key: &str, headers: &[(&str, &str)]) -> Answer {
    let mut all = vec![("x-api-key", key)];
    all.extend_from_slice(headers);
    send(
        Method::POST,
        &g.url("/api/v1/tools/t1/deploy"),
        &all,
        Bytes::new(),
    )
    .await
}

async fn status(g: &TestGateway, key: &str) -> (u16, String) {
    let answer = call(g, key, &[]).await;
    let code = if answer.status == 200 {
        String::new()
    } else {
        answer.error_code()
    };
    (answer.status.as_u16(), code)
}

async fn new_key(g: &TestGateway, body: serde_json::Value) -> (String, String) {
    let app = g
        .create_app(
            &format!("app-{}", common::gateway::rand_suffix()),
            &["deploy_tool"],
        )
        .await;
    let created = g
        .admin(Method::POST, &format!("/v1/apps/{app}/keys"), Some(body))
        .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let json = created.json();
    (
        json["id"].as_str().expect("id").to_owned(),
        json["key"].as_str().expect("key").to_owned(),
    )
}

async fn key_json(g: &TestGateway, id: &str) -> serde_json::Value {
    let answer = g.admin(Method::GET, &format!("/v1/keys/{id}"), None).await;
    assert_eq!(answer.status, 200);
    answer.json()
}

async fn embedded(edit: impl FnOnce(String) -> String) -> (Upstream, TestGateway) {
    let upstream = Upstream::start().await;
    let g = TestGateway::in_front_of(&upstream.url(), edit).await;
    (upstream, g)
}

async fn on_redis(
    redis: &RedisServer,
    edit: impl FnOnce(String) -> String,
) -> (Upstream, TestGateway) {
    let upstream = Upstream::start().await;
    let g = gateway_on_url(&redis.url(), &upstream, edit).await;
    wait_subscribers(&redis.url(), 1).await;
    (upstream, g)
}

// ------------------------------------------------------------- single instance, both stores

async fn revoke_keeps_the_record_and_its_usage(g: &TestGateway) {
    let (id, key) = new_key(g, json!({"name": "to revoke"})).await;
    assert_eq!(status(g, &key).await.0, 200);
    let revoked = g
        .admin(Method::DELETE, &format!("/v1/keys/{id}"), None)
        .await;
    assert_eq!(revoked.status, 204);
    assert_eq!(status(g, &key).await, (401, "invalid_key".to_owned()));
    let k = key_json(g, &id).await;
    assert_eq!(k["status"], "revoked");
    assert_eq!(k["revoked_by"], "admin");
    let listed = g
        .admin(Method::GET, "/v1/keys?status=revoked", None)
        .await
        .json();
    assert!(listed
        .as_array()
        .expect("array")
        .iter()
        .any(|k| k["id"] == id.as_str()));
    // Its usage is still readable (the use is flushed within 2 s).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let usage = g
            .admin(Method::GET, &format!("/v1/keys/{id}/usage?days=1"), None)
            .await;
        assert_eq!(usage.status, 200);
        if usage.json()[0]["requests"] == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "usage of a revoked key: {:?}",
            usage.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nothing brings it back.
    for action in ["enable", "disable", "roll"] {
        let answer = g
            .admin(Method::POST, &format!("/v1/keys/{id}/{action}"), None)
            .await;
        assert_eq!(answer.status, 409, "{action}: {:?}", answer.body);
    }
}

async fn disable_and_enable(g: &TestGateway) {
    let (id, key) = new_key(g, json!({"name": "pausable"})).await;
    assert_eq!(status(g, &key).await.0, 200);
    let disabled = g
        .admin(Method::POST, &format!("/v1/keys/{id}/disable"), None)
        .await;
    assert_eq!(disabled.status, 200);
    assert_eq!(disabled.json()["status"], "disabled");
    assert_eq!(status(g, &key).await, (401, "disabled_key".to_owned()));
    // A wrong secret on a disabled key is still just invalid.
    // (The last character changed: to `y` when it was `x`, so it always differs.)
    let last = if key.ends_with('x') { 'y' } else { 'x' };
    let wrong = format!("{}{last}", &key[..key.len() - 1]);
    assert_eq!(status(g, &wrong).await, (401, "invalid_key".to_owned()));
    let enabled = g
        .admin(Method::POST, &format!("/v1/keys/{id}/enable"), None)
        .await;
    assert_eq!(enabled.json()["status"], "active");
    assert_eq!(status(g, &key).await.0, 200);
}

async fn roll_with_grace(g: &TestGateway) {
    let (id, old) = new_key(
        g,
        json!({"name": "rolled", "allowed_ips": ["127.0.0.1"], "expires_in_days": 10}),
    )
    .await;
    let rolled = g
        .admin(
            Method::POST,
            &format!("/v1/keys/{id}/roll"),
            Some(json!({"grace": "2s"})),
        )
        .await;
    assert_eq!(rolled.status, 201, "{:?}", rolled.body);
    let new = rolled.json();
    let new_key = new["key"].as_str().expect("the new key, once").to_owned();
    assert_eq!(new["name"], "rolled");
    assert_eq!(new["allowed_ips"], json!(["127.0.0.1"]));
    assert!(new["expires_at"].is_string(), "same expiry policy: {new}");
    assert!(key_json(g, new["id"].as_str().expect("id"))
        .await
        .get("key")
        .is_none());
    // Both work during the grace; then only the new one.
    assert_eq!(status(g, &old).await.0, 200);
    assert_eq!(status(g, &new_key).await.0, 200);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(status(g, &old).await, (401, "expired_key".to_owned()));
    assert_eq!(status(g, &new_key).await.0, 200);

    // Grace 0s revokes at once.
    let rolled = g
        .admin(
            Method::POST,
            &format!("/v1/keys/{}/roll", new["id"].as_str().expect("id")),
            Some(json!({"grace": "0s"})),
        )
        .await;
    assert_eq!(rolled.status, 201);
    assert_eq!(status(g, &new_key).await, (401, "invalid_key".to_owned()));
    let newest = rolled.json()["key"].as_str().expect("key").to_owned();
    assert_eq!(status(g, &newest).await.0, 200);
    let bad = g
        .admin(
            Method::POST,
            &format!("/v1/keys/{id}/roll"),
            Some(json!({"grace": "soon"})),
        )
        .await;
    assert_eq!(bad.status, 422);
}

async fn allowed_ips(g: &TestGateway) {
    let (_, elsewhere) = new_key(
        g,
        json!({"name": "office", "allowed_ips": ["10.0.0.0/8", "2001:db8::/32"]}),
    )
    .await;
    assert_eq!(
        status(g, &elsewhere).await,
        (403, "ip_not_allowed".to_owned())
    );
    let (_, here) = new_key(
        g,
        json!({"name": "local", "allowed_ips": ["::1", "127.0.0.0/8"]}),
    )
    .await;
    assert_eq!(status(g, &here).await.0, 200);
    let app = g.create_app("cidr-check", &["deploy_tool"]).await;
    for bad in [
        json!(["10.0.0.0/33"]),
        json!(["not an address"]),
        json!(["::1/129"]),
    ] {
        let answer = g
            .admin(
                Method::POST,
                &format!("/v1/apps/{app}/keys"),
                Some(json!({"name": "x", "allowed_ips": bad})),
            )
            .await;
        assert_eq!(answer.status, 422, "{bad}");
        assert!(String::from_utf8_lossy(&answer.body).contains("allowed_ips"));
    }
}

async fn expiry_policy(g: &TestGateway) {
    let (id, _) = new_key(g, json!({"name": "policy default"})).await;
    let k = key_json(g, &id).await;
    assert!(
        k["expires_at"].is_string(),
        "default_expires_in_days applies: {k}"
    );
    let app = g.create_app("too-long", &["deploy_tool"]).await;
    let refused = g
        .admin(
            Method::POST,
            &format!("/v1/apps/{app}/keys"),
            Some(json!({"name": "x", "expires_in_days": 61})),
        )
        .await;
    assert_eq!(refused.status, 422);
    let (soon, _) = new_key(g, json!({"name": "soon", "expires_in_days": 3})).await;
    let within = |days: u32| async move {
        let listed = g
            .admin(
                Method::GET,
                &format!("/v1/keys?expiring_within_days={days}"),
                None,
            )
            .await
            .json();
        listed
            .as_array()
            .expect("array")
            .iter()
            .map(|k| k["id"].as_str().expect("id").to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(within(7).await, std::slice::from_ref(&soon));
    let month = within(31).await;
    assert!(month.contains(&id) && month.contains(&soon));
}

async fn retained_then_purged(g: &TestGateway) {
    let (id, _) = new_key(g, json!({"name": "purged later"})).await;
    assert_eq!(
        g.admin(Method::DELETE, &format!("/v1/keys/{id}"), None)
            .await
            .status,
        204
    );
    let store = g.inner.as_ref().expect("running").store.clone();
    // Within its retention it stays; past it (here: none) the upkeep purges it.
    assert!(
        scopegate::lifecycle::purge_revoked(&*store, Duration::from_secs(3600))
            .await
            .is_empty()
    );
    assert_eq!(key_json(g, &id).await["status"], "revoked");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let purged = scopegate::lifecycle::purge_revoked(&*store, Duration::ZERO).await;
    assert_eq!(purged, std::slice::from_ref(&id));
    assert_eq!(
        g.admin(Method::GET, &format!("/v1/keys/{id}"), None)
            .await
            .status,
        404
    );
    let audit = g
        .admin(Method::GET, &format!("/v1/audit?key={id}"), None)
        .await
        .json();
    assert_eq!(audit[0]["action"], "key.purged", "{audit}");
    assert_eq!(audit[0]["actor"], "scopegate");
}

fn policy(yaml: String) -> String {
    format!("{yaml}keys:\n  default_expires_in_days: 30\n  max_expires_in_days: 60\n")
}

macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod embedded_store {
            $(
                #[tokio::test]
                async fn $name() {
                    let (_upstream, g) = super::embedded(super::policy).await;
                    super::$name(&g).await;
                }
            )*
        }
        mod redis_store {
            $(
                #[tokio::test]
                async fn $name() {
                    let redis = super::RedisServer::start();
                    let (_upstream, g) = super::on_redis(&redis, super::policy).await;
                    super::$name(&g).await;
                }
            )*
        }
    };
}

on_both_stores!(
    revoke_keeps_the_record_and_its_usage,
    disable_and_enable,
    roll_with_grace,
    allowed_ips,
    expiry_policy,
    retained_then_purged,
);

#[tokio::test]
async fn allowed_ips_see_the_client_through_trusted_proxies() {
    let (_upstream, g) = embedded(|y| {
        y.replace(
            "shutdown_grace: 5s",
            "shutdown_grace: 5s\nlimits:\n  trusted_proxies: [127.0.0.1/32]",
        )
    })
    .await;
    let (_, key) = new_key(
        &g,
        json!({"name": "behind lb", "allowed_ips": ["203.0.113.0/24"]}),
    )
    .await;
    let from = |xff: &'static str| {
        let (g, key) = (&g, key.clone());
        async move { call(g, &key, &[("x-forwarded-for", xff)]).await.status }
    };
    assert_eq!(from("203.0.113.7").await, 200);
    assert_eq!(from("198.51.100.1").await, 403);
    // The right-most address not a trusted proxy is the client; what a client writes left of
    // it does not count.
    assert_eq!(from("203.0.113.7, 198.51.100.1").await, 403);
    assert_eq!(from("198.51.100.1, 203.0.113.7, 127.0.0.1").await, 200);
}

// ------------------------------------------------------------- two instances on Redis

/// Polls `b` until `key` gets `want`; how long after `since` that was.
async fn seen_on(b: &TestGateway, key: &str, want: u16, since: Instant) -> Duration {
    loop {
        let (got, _) = status(b, key).await;
        if got == want {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < PROPAGATION,
            "still {got} after {:?}",
            since.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_roll_and_revoke_reach_the_other_instance_within_a_second() {
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let a = gateway_on_url(&redis.url(), &upstream, |y| y).await;
    let b = gateway_on_url(&redis.url(), &upstream, |y| y).await;
    wait_subscribers(&redis.url(), 2).await;

    let (id, key) = new_key(&a, json!({"name": "shared"})).await;
    assert_eq!(status(&b, &key).await.0, 200, "cached on B");
    a.admin(Method::POST, &format!("/v1/keys/{id}/disable"), None)
        .await;
    let took = seen_on(&b, &key, 401, Instant::now()).await;
    println!("disable seen on the other instance after {took:?}");
    a.admin(Method::POST, &format!("/v1/keys/{id}/enable"), None)
        .await;
    seen_on(&b, &key, 200, Instant::now()).await;

    // A roll with a grace: both keys work on B until it ends, then only the new one.
    let rolled = a
        .admin(
            Method::POST,
            &format!("/v1/keys/{id}/roll"),
            Some(json!({"grace": "2s"})),
        )
        .await
        .json();
    let new_key = rolled["key"].as_str().expect("key").to_owned();
    assert_eq!(status(&b, &key).await.0, 200);
    assert_eq!(status(&b, &new_key).await.0, 200);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(status(&b, &key).await, (401, "expired_key".to_owned()));
    assert_eq!(status(&a, &key).await, (401, "expired_key".to_owned()));

    let new_id = rolled["id"].as_str().expect("id").to_owned();
    a.admin(Method::DELETE, &format!("/v1/keys/{new_id}"), None)
        .await;
    let took = seen_on(&b, &new_key, 401, Instant::now()).await;
    println!("revoke seen on the other instance after {took:?}");
}
