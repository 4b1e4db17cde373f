//! A store node that answers without holding the deployment's data (as a Cluster node taking
//! over a slot empty did during a failover under load): its "no such key" is a store error,
//! never a 401 for a valid key, and never remembered as an unknown id.

mod common;

use common::instances::{gateway_on_url, redis_conn, wait_subscribers};
use common::redis::RedisServer;
use common::upstream::Upstream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_node_in_the_stores_place_is_unavailable_not_unknown_keys() {
    let mut redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let g = gateway_on_url(&redis.url(), &upstream, |y| y).await;
    wait_subscribers(&redis.url(), 1).await;
    let valid = g.key_with(&["deploy_tool"]).await;
    let made_up = "sg_AAAAAAAAAAAA_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB";
    assert_eq!(
        g.deploy(made_up).await,
        401,
        "an unknown key, data in place"
    );

    // Everything the store holds, to put back later.
    let mut conn = redis_conn(&redis.url()).await;
    let names: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .expect("keys");
    let mut dumped = Vec::new();
    for name in names {
        let dump: Vec<u8> = redis::cmd("DUMP")
            .arg(&name)
            .query_async(&mut conn)
            .await
            .expect("dump");
        dumped.push((name, dump));
    }

    // The same address now answers with none of the data (no persistence: it restarts empty).
    redis.stop();
    redis.start_again();
    wait_subscribers(&redis.url(), 1).await;
    for _ in 0..3 {
        assert_eq!(
            g.deploy(&valid).await,
            503,
            "a valid key, asked of a node without the data"
        );
    }

    // The data is back (the node with it took over): the valid key works at once, so the
    // 503s above left no "unknown id" entry behind.
    let mut conn = redis_conn(&redis.url()).await;
    for (name, dump) in &dumped {
        let _: () = redis::cmd("RESTORE")
            .arg(name)
            .arg(0)
            .arg(dump)
            .arg("REPLACE")
            .query_async(&mut conn)
            .await
            .expect("restore");
    }
    assert_eq!(g.deploy(&valid).await, 200);
    assert_eq!(g.deploy(made_up).await, 401);
}
