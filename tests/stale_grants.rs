//! No stale grant after an invalidation, across instances: instance B reaches Redis through a
//! proxy that holds command replies back 150 ms, so B's cache fill reads a key or app, the
//! admin API on instance A revokes or narrows it, the invalidation reaches B, and only then
//! does the (stale) reply arrive. B must refuse from then on, the request that waited on that
//! fill included. Each scenario checks the race really happened (the stale reply was delivered
//! after the admin API answered) and runs several times.

mod common;

use common::gateway::{deploy_at, TestGateway};
use common::instances::slow_pair;
use http::Method;
use std::time::Duration;
use tokio::time::Instant;

/// The contract's bound for a change to reach every instance.
const PROPAGATION: Duration = Duration::from_secs(1);
const REPLY_DELAY: Duration = Duration::from_millis(150);
const ROUNDS: usize = 3;

/// A deploy call on `gateway` started in the background (its fill is what the test races).
fn deploy_in_background(gateway: &TestGateway, key: &str) -> tokio::task::JoinHandle<u16> {
    let (proxy, key) = (gateway.proxy, key.to_owned());
    tokio::spawn(async move { deploy_at(proxy, &key).await })
}

/// Polls B until it answers `want`; how long after `since` that was.
async fn refused_after(gateway: &TestGateway, key: &str, want: u16, since: Instant) -> Duration {
    loop {
        let status = gateway.deploy(key).await;
        let elapsed = since.elapsed();
        if status == want {
            return elapsed;
        }
        assert!(
            elapsed < PROPAGATION,
            "still {status} {elapsed:?} after the admin API answered"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_while_another_instance_fills_it_is_refused_there() {
    let p = slow_pair(REPLY_DELAY).await;
    for round in 0..ROUNDS {
        let app =
            p.a.create_app(&format!("revoke-{round}"), &["deploy_tool"])
                .await;
        let (key_id, key) = p.a.create_key(&app, None).await;
        let in_flight = deploy_in_background(&p.b, &key);
        // B's read of the key record has been answered by Redis; the reply is on the wire.
        let stale = p.proxy.wait_held(&format!("\"id\":\"{key_id}\"")).await;
        let revoked =
            p.a.admin(Method::DELETE, &format!("/v1/keys/{key_id}"), None)
                .await;
        let answered = Instant::now();
        assert_eq!(revoked.status, 204);
        assert!(
            stale.release_at > answered,
            "the race did not happen: the stale reply arrived before the admin API answered"
        );
        assert_eq!(
            in_flight.await.expect("request"),
            401,
            "the request waiting on the stale fill was served"
        );
        let took = refused_after(&p.b, &key, 401, answered).await;
        println!("round {round}: revoked key refused by the other instance {took:?} after the admin API answered");
        // And it stays refused (not merely not yet cached).
        assert_eq!(p.b.deploy(&key).await, 401);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scope_removed_while_another_instance_fills_the_app_is_refused_there() {
    let p = slow_pair(REPLY_DELAY).await;
    for round in 0..ROUNDS {
        let name = format!("narrow-{round}");
        let app =
            p.a.create_app(&name, &["deploy_tool", "view_job_status"])
                .await;
        let (_, key) = p.a.create_key(&app, None).await;
        let in_flight = deploy_in_background(&p.b, &key);
        // B has the key and is reading the app: its reply (old scopes) is on the wire.
        let stale = p.proxy.wait_held(&format!("\"name\":\"{name}\"")).await;
        let narrowed =
            p.a.admin(
                Method::PATCH,
                &format!("/v1/apps/{app}"),
                Some(serde_json::json!({"scopes": ["view_job_status"]})),
            )
            .await;
        let answered = Instant::now();
        assert_eq!(narrowed.status, 200);
        assert!(
            stale.release_at > answered,
            "the race did not happen: the stale reply arrived before the admin API answered"
        );
        assert_eq!(
            in_flight.await.expect("request"),
            403,
            "the request waiting on the stale app was served"
        );
        let took = refused_after(&p.b, &key, 403, answered).await;
        println!("round {round}: removed scope refused by the other instance {took:?} after the admin API answered");
        assert_eq!(p.b.deploy(&key).await, 403);
    }
}
