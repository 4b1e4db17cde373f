//! No lost update: two instances edit one app at once (one renames it, one narrows its scopes)
//! and both edits stay. Instance B reaches Redis through a proxy that holds replies back
//! 150 ms, so its read of the app is always older than A's rename; each round checks that
//! this race really happened. Plus `ETag` / `If-Match` on app edits and deletes.

mod common;

use common::gateway::TestGateway;
use common::instances::slow_pair;
use common::upstream::Upstream;
use http::Method;
use std::time::Duration;
use tokio::time::Instant;

const REPLY_DELAY: Duration = Duration::from_millis(150);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_and_a_scope_narrowing_on_two_instances_both_apply() {
    let p = slow_pair(REPLY_DELAY).await;
    let (a, b, proxy) = (&p.a, &p.b, &p.proxy);

    for round in 0..3 {
        let name = format!("original-{round}");
        let app = a
            .create_app(&name, &["deploy_tool", "view_job_status"])
            .await;
        let narrowing = {
            let (b, app) = (b.clone(), app.clone());
            tokio::spawn(async move {
                let body = serde_json::json!({"scopes": ["view_job_status"]});
                b.admin(Method::PATCH, &format!("/v1/apps/{app}"), Some(body))
                    .await
            })
        };
        // B has read the app (old name, old scopes); the reply is on the wire.
        let stale = proxy.wait_held(&format!("\"name\":\"{name}\"")).await;
        let renamed = a
            .admin(
                Method::PATCH,
                &format!("/v1/apps/{app}"),
                Some(serde_json::json!({"name": format!("renamed-{round}")})),
            )
            .await;
        assert_eq!(renamed.status, 200, "{:?}", renamed.body);
        assert!(
            stale.release_at > Instant::now(),
            "the race did not happen: B's read arrived before A's rename was done"
        );
        let narrowed = narrowing.await.expect("task");
        assert_eq!(narrowed.status, 200, "{:?}", narrowed.body);

        let now = a.admin(Method::GET, &format!("/v1/apps/{app}"), None).await;
        let now = now.json();
        assert_eq!(
            now["name"],
            format!("renamed-{round}"),
            "rename undone: {now}"
        );
        assert_eq!(
            now["scopes"],
            serde_json::json!(["view_job_status"]),
            "narrowing undone: {now}"
        );
    }
}

async fn etag_of(g: &TestGateway, app: &str) -> String {
    let answer = g.admin(Method::GET, &format!("/v1/apps/{app}"), None).await;
    assert_eq!(answer.status, 200);
    answer
        .headers
        .get("etag")
        .expect("an ETag on GET")
        .to_str()
        .expect("text")
        .to_owned()
}

async fn with_if_match(
    g: &TestGateway,
    method: Method,
    app: &str,
    etag: &str,
    body: Option<serde_json::Value>,
) -> common::http::Answer {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = format!("Bearer {}", common::gateway::ADMIN_TOKEN);
    common::http::send(
        method,
        &format!("http://{}/v1/apps/{app}", g.admin),
        &[
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
            ("if-match", etag),
        ],
        body,
    )
    .await
}

#[tokio::test]
async fn a_stale_if_match_is_refused_with_412_and_changes_nothing() {
    let upstream = Upstream::start().await;
    let g = TestGateway::in_front_of(&upstream.url(), |y| y).await;
    let app = g.create_app("tagged", &["deploy_tool"]).await;
    let first = etag_of(&g, &app).await;

    let edit = serde_json::json!({"name": "tagged-2"});
    let ok = with_if_match(&g, Method::PATCH, &app, &first, Some(edit)).await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    let second = ok
        .headers
        .get("etag")
        .expect("ETag on PATCH")
        .to_str()
        .expect("text")
        .to_owned();
    assert_ne!(first, second, "an edit changes the ETag");
    assert_eq!(second, etag_of(&g, &app).await);

    // An edit based on the first read is stale now.
    let stale_edit = serde_json::json!({"scopes": ["view_job_status"]});
    let refused = with_if_match(&g, Method::PATCH, &app, &first, Some(stale_edit)).await;
    assert_eq!(refused.status, 412);
    assert_eq!(refused.error_code(), "precondition_failed");
    let refused = with_if_match(&g, Method::DELETE, &app, &first, None).await;
    assert_eq!(refused.status, 412);
    let now = g
        .admin(Method::GET, &format!("/v1/apps/{app}"), None)
        .await
        .json();
    assert_eq!(now["scopes"], serde_json::json!(["deploy_tool"]));
    assert_eq!(now["name"], "tagged-2");

    // `*` only asks that the app exists; a weak or foreign tag never matches.
    let star = with_if_match(&g, Method::PATCH, &app, "*", Some(serde_json::json!({}))).await;
    assert_eq!(star.status, 200);
    let weak = format!("W/{}", etag_of(&g, &app).await);
    let refused = with_if_match(&g, Method::PATCH, &app, &weak, Some(serde_json::json!({}))).await;
    assert_eq!(refused.status, 412);

    let current = etag_of(&g, &app).await;
    let deleted = with_if_match(&g, Method::DELETE, &app, &current, None).await;
    assert_eq!(deleted.status, 204);
}

#[tokio::test]
async fn a_null_rate_limit_returns_the_app_to_the_default_and_absent_fields_stay() {
    let upstream = Upstream::start().await;
    let g = TestGateway::in_front_of(&upstream.url(), |y| y).await;
    let app = g.create_app("limited", &["deploy_tool"]).await;
    let path = format!("/v1/apps/{app}");
    let limit = serde_json::json!({"rate_limit": {"per_second": 5, "burst": 9}});
    assert_eq!(g.admin(Method::PATCH, &path, Some(limit)).await.status, 200);
    let rename = serde_json::json!({"name": "limited-2"});
    let now = g.admin(Method::PATCH, &path, Some(rename)).await.json();
    assert_eq!(
        now["rate_limit"],
        serde_json::json!({"per_second": 5, "burst": 9})
    );
    let clear = serde_json::json!({"rate_limit": null});
    let now = g.admin(Method::PATCH, &path, Some(clear)).await.json();
    assert_eq!(now["rate_limit"], serde_json::Value::Null);
    assert_eq!(now["name"], "limited-2");
}
