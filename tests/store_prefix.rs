//! `store.prefix`: two deployments sharing one Redis under different prefixes see nothing of
//! each other (apps, keys, invalidations), and every key either writes starts with its prefix.

mod common;

use common::instances::{gateway_on_url, redis_conn, wait_subscribers};
use common::redis::RedisServer;
use common::upstream::Upstream;
use http::Method;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_prefixes_on_one_redis_stay_apart() {
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let with_prefix = |prefix: &'static str| {
        move |yaml: String| yaml.replace("  redis: ", &format!("  prefix: \"{prefix}\"\n  redis: "))
    };
    let a = gateway_on_url(&redis.url(), &upstream, with_prefix("tenant-a:")).await;
    let b = gateway_on_url(&redis.url(), &upstream, with_prefix("tenant-b:")).await;
    wait_subscribers(&redis.url(), 0).await;

    let key = a.key_with(&["deploy_tool"]).await;
    assert_eq!(a.deploy(&key).await, 200);
    assert_eq!(
        b.deploy(&key).await,
        401,
        "a key of tenant a works on tenant b"
    );
    let listed = b.admin(Method::GET, "/v1/apps", None).await.json();
    assert_eq!(listed, serde_json::json!([]));
    // Same app name in both: no clash.
    b.create_app("app-0", &["deploy_tool"]).await;

    let mut conn = redis_conn(&redis.url()).await;
    let all: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .expect("keys");
    assert!(!all.is_empty());
    for name in &all {
        assert!(
            name.starts_with("tenant-a:") || name.starts_with("tenant-b:"),
            "{name} is outside both prefixes"
        );
    }
    let channels: Vec<String> = redis::cmd("PUBSUB")
        .arg("CHANNELS")
        .query_async(&mut conn)
        .await
        .expect("channels");
    let mut channels = channels;
    channels.sort();
    assert_eq!(channels, ["tenant-a:invalidate", "tenant-b:invalidate"]);
}
