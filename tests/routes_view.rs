//! `GET /v1/routes`: the routes of the config in force, in matching order, also after a reload
//! (and unchanged by a reload that is refused).

mod common;

use common::gateway::TestGateway;
use common::upstream::Upstream;
use http::Method;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// A reload takes effect within 2 seconds (the contract); a little room on a busy machine.
const RELOAD_WITHIN: Duration = Duration::from_secs(5);

async fn routes(gw: &TestGateway) -> Value {
    let answer = gw.admin(Method::GET, "/v1/routes", None).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    answer.json()
}

async fn routes_once_changed(gw: &TestGateway, before: &Value) -> Value {
    let started = Instant::now();
    loop {
        let now = routes(gw).await;
        if now != *before {
            return now;
        }
        assert!(
            started.elapsed() < RELOAD_WITHIN,
            "the routes view never changed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn routes_come_from_the_config_in_force() {
    let upstream = Upstream::start().await;
    let gw = TestGateway::in_front_of(&upstream.url(), |yaml| yaml).await;
    let listed = routes(&gw).await;
    let listed = listed.as_array().expect("array");
    // The test config's 10 routes, in file order, each shaped as the contract says.
    assert_eq!(listed.len(), 10, "{listed:?}");
    assert_eq!(
        listed[0],
        json!({"methods": ["POST"], "path": "/api/v1/tools/{tool_id}/deploy",
               "scope": "deploy_tool", "upstream": "tools"})
    );
    assert_eq!(listed[2]["methods"], json!(["GET", "HEAD"]));
    assert_eq!(
        listed[7],
        json!({"methods": ["GET"], "path": "/api/v1/health", "scope": "public", "upstream": "tools"})
    );
    assert_eq!(
        listed[9],
        json!({"methods": ["*"], "path": "/api/v1/prefixed/{anything}",
               "scope": "public", "upstream": "prefixed"})
    );

    // A valid edit: the health route moves and a route is added in front.
    let yaml = std::fs::read_to_string(gw.config_path()).expect("read config");
    let edited = yaml.replace("path: /api/v1/health", "path: /api/v2/health").replace(
        "routes:\n",
        "routes:\n  - method: [PUT, DELETE]\n    path: /api/v1/files/{name}\n    scope: upload_file\n    upstream: tools\n",
    );
    std::fs::write(gw.config_path(), &edited).expect("write config");
    gw.inner.as_ref().expect("running").reload();
    let after = routes_once_changed(&gw, &Value::Array(listed.clone())).await;
    let after = after.as_array().expect("array");
    assert_eq!(after.len(), 11);
    assert_eq!(
        after[0],
        json!({"methods": ["PUT", "DELETE"], "path": "/api/v1/files/{name}",
               "scope": "upload_file", "upstream": "tools"})
    );
    assert_eq!(after[8]["path"], "/api/v2/health");
    // The view and the routing table were swapped together.
    let health = common::http::get(&gw.url("/api/v2/health"), &[]).await;
    assert_eq!(health.status, 200);

    // A refused edit changes neither.
    std::fs::write(
        gw.config_path(),
        edited.replace("upstream: prefixed", "upstream: nowhere"),
    )
    .expect("write config");
    gw.inner.as_ref().expect("running").reload();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(routes(&gw).await, Value::Array(after.clone()));
}
