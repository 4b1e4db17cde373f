//! The audit log (every admin write with its actor, never a secret; filters, pages) and the
//! usage export (per app, key and day; CSV and JSON), on both stores.

mod common;

use bytes::Bytes;
use common::gateway::TestGateway;
use common::http::send;
use common::instances::{gateway_on_url, wait_subscribers};
use common::redis::RedisServer;
use common::upstream::Upstream;
use http::Method;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::time::Instant;

async fn admin_json(g: &TestGateway, method: Method, path: &str, body: Option<Value>) -> Value {
    let answer = g.admin(method, path, body).await;
    assert!(
        answer.status.is_success(),
        "{path}: {} {:?}",
        answer.status,
        answer.body
    );
    if answer.body.is_empty() {
        Value::Null
    } else {
        answer.json()
    }
}

async fn audit_trail(g: &TestGateway) {
    let app = g.create_app("audited", &["deploy_tool"]).await;
    let path = format!("/v1/apps/{app}");
    admin_json(
        g,
        Method::PATCH,
        &path,
        Some(json!({"scopes": ["view_job_status"]})),
    )
    .await;
    let created = admin_json(
        g,
        Method::POST,
        &format!("{path}/keys"),
        Some(json!({"name": "k"})),
    )
    .await;
    let key_id = created["id"].as_str().expect("id").to_owned();
    let full = created["key"].as_str().expect("key").to_owned();
    admin_json(g, Method::POST, &format!("/v1/keys/{key_id}/disable"), None).await;
    admin_json(g, Method::POST, &format!("/v1/keys/{key_id}/enable"), None).await;
    let rolled = admin_json(
        g,
        Method::POST,
        &format!("/v1/keys/{key_id}/roll"),
        Some(json!({"grace": "1h"})),
    )
    .await;
    let new_full = rolled["key"].as_str().expect("key").to_owned();
    admin_json(g, Method::DELETE, &format!("/v1/keys/{key_id}"), None).await;
    admin_json(g, Method::DELETE, &path, None).await;

    let all = admin_json(g, Method::GET, &format!("/v1/audit?app={app}"), None).await;
    let actions: Vec<&str> = all
        .as_array()
        .expect("array")
        .iter()
        .map(|e| e["action"].as_str().expect("action"))
        .collect();
    assert_eq!(
        actions,
        [
            "app.deleted",
            "key.revoked",
            "key.rolled",
            "key.enabled",
            "key.disabled",
            "key.created",
            "app.updated",
            "app.created"
        ],
        "newest first: {all}"
    );
    let events = all.as_array().expect("array");
    assert!(events
        .iter()
        .all(|e| e["actor"] == "admin" && e["at"].is_string()));
    let updated = &events[6];
    assert_eq!(
        updated["details"]["scopes"]["before"],
        json!(["deploy_tool"])
    );
    assert_eq!(
        updated["details"]["scopes"]["after"],
        json!(["view_job_status"])
    );
    assert_eq!(events[2]["details"]["new_key_id"], rolled["id"]);
    // Never secret material.
    let text = all.to_string();
    for secret in [&full, &new_full] {
        assert!(!text.contains(secret.as_str()), "a key in the audit log");
        let secret_part = secret.rsplit('_').next().expect("secret");
        assert!(!text.contains(secret_part), "a secret in the audit log");
    }

    // Filters and pages.
    let for_key = admin_json(g, Method::GET, &format!("/v1/audit?key={key_id}"), None).await;
    assert_eq!(for_key.as_array().map(Vec::len), Some(5), "{for_key}");
    let future = admin_json(g, Method::GET, "/v1/audit?since=2999-01-01T00:00:00Z", None).await;
    assert_eq!(future, json!([]));
    let bad = g
        .admin(Method::GET, "/v1/audit?since=yesterday", None)
        .await;
    assert_eq!(bad.status, 422);
    let first = g
        .admin(Method::GET, &format!("/v1/audit?app={app}&limit=4"), None)
        .await;
    assert_eq!(first.json().as_array().map(Vec::len), Some(4));
    let link = first
        .headers
        .get("link")
        .expect("a next page")
        .to_str()
        .expect("text");
    let next = &link[link.find('<').expect("<") + 1..link.find('>').expect(">")];
    let second = admin_json(g, Method::GET, next, None).await;
    assert_eq!(
        second.as_array().expect("array")[0]["action"],
        "key.disabled"
    );
}

async fn usage_export(g: &TestGateway) {
    let app = g.create_app("billed", &["deploy_tool"]).await;
    let (k1, key1) = g.create_key(&app, None).await;
    let (k2, key2) = g.create_key(&app, None).await;
    let (_k3, _unused) = g.create_key(&app, None).await;
    for (key, times) in [(&key1, 3), (&key2, 2)] {
        for _ in 0..times {
            let answer = send(
                Method::POST,
                &g.url("/api/v1/tools/t/deploy"),
                &[("x-api-key", key)],
                Bytes::new(),
            )
            .await;
            assert_eq!(answer.status, 200);
        }
    }
    let today = admin_json(g, Method::GET, &format!("/v1/keys/{k1}/usage?days=1"), None).await[0]
        ["date"]
        .as_str()
        .expect("date")
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(5);
    let csv = loop {
        let answer = g
            .admin(
                Method::GET,
                &format!("/v1/usage/export?from={today}&to={today}&format=csv"),
                None,
            )
            .await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.headers["content-type"], "text/csv; charset=utf-8");
        let text = String::from_utf8(answer.body.to_vec()).expect("utf-8");
        if text.lines().count() == 3 || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines.remove(0),
        "date,app_id,key_id,requests,input_tokens,output_tokens"
    );
    lines.sort();
    let mut want = vec![
        format!("{today},{app},{k1},3,0,0"),
        format!("{today},{app},{k2},2,0,0"),
    ];
    want.sort();
    assert_eq!(lines, want, "{csv}");
    let rows = admin_json(
        g,
        Method::GET,
        &format!("/v1/usage/export?from={today}&to={today}&format=json"),
        None,
    )
    .await;
    let total: u64 = rows
        .as_array()
        .expect("array")
        .iter()
        .map(|r| r["requests"].as_u64().expect("n"))
        .sum();
    assert_eq!(total, 5);
    for bad in [
        "from=2026-02-01&to=2026-01-01",
        "from=2024-01-01&to=2025-12-31",
        "from=yesterday&to=2026-01-01",
        &format!("from={today}&to={today}&format=xml"),
    ] {
        assert_eq!(
            g.admin(Method::GET, &format!("/v1/usage/export?{bad}"), None)
                .await
                .status,
            422,
            "{bad}"
        );
    }
}

macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod embedded_store {
            $(
                #[tokio::test]
                async fn $name() {
                    let upstream = super::Upstream::start().await;
                    let g = super::TestGateway::in_front_of(&upstream.url(), |y| y).await;
                    super::$name(&g).await;
                }
            )*
        }
        mod redis_store {
            $(
                #[tokio::test]
                async fn $name() {
                    let redis = super::RedisServer::start();
                    let upstream = super::Upstream::start().await;
                    let g = super::gateway_on_url(&redis.url(), &upstream, |y| y).await;
                    super::wait_subscribers(&redis.url(), 1).await;
                    super::$name(&g).await;
                }
            )*
        }
    };
}

on_both_stores!(audit_trail, usage_export);
