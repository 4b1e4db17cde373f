//! Shared rate limits and quotas on a real Redis Cluster: the lease scripts touch one slot each
//! (no CROSSSLOT), and two instances still share one budget and one quota.

mod common;

use common::cluster::RedisCluster;
use common::gateway::deploy_at;
use common::instances::gateway_on_url;
use common::upstream::Upstream;

#[tokio::test]
async fn two_instances_on_a_cluster_share_the_budget_and_the_quota() {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .expect("cluster");
    let upstream = Upstream::start().await;
    let limits = |yaml: String| {
        yaml.replace(
            "  per_second: 1000\n  burst: 1000\n",
            "  per_second: 1\n  burst: 4\n  shared: true\n",
        )
        .replace(
            "shutdown_grace: 5s\n",
            "shutdown_grace: 5s\nquota:\n  per_day: 6\n",
        )
        .replace("  redis: ", "  timeout: 1s\n  redis: ")
    };
    let a = gateway_on_url(&cluster.url(), &upstream, limits).await;
    let b = gateway_on_url(&cluster.url(), &upstream, limits).await;
    let key = a.key_with(&["deploy_tool"]).await;
    // Alternating instances: the burst of 4 holds across both (per instance it would be 8).
    let mut first = Vec::new();
    for i in 0..8 {
        let proxy = if i % 2 == 0 { a.proxy } else { b.proxy };
        first.push(deploy_at(proxy, &key).await);
    }
    assert_eq!(first.iter().filter(|s| **s == 200).count(), 4, "{first:?}");
    assert!(first.iter().all(|s| *s == 200 || *s == 429), "{first:?}");
    // Two more come back within two seconds; then the day's 6 are used up on both.
    tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
    assert_eq!(deploy_at(a.proxy, &key).await, 200);
    assert_eq!(deploy_at(b.proxy, &key).await, 200);
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let answer = common::http::send(
        http::Method::POST,
        &b.url("/api/v1/tools/t1/deploy"),
        &[("x-api-key", &key)],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(answer.status, 429);
    assert_eq!(answer.error_code(), "quota_exceeded");
}
