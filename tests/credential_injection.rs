//! Upstream credentials on the proxy path, over real sockets to a recording upstream: the
//! default header and a custom header and format, the client's own copy dropped, an app's own
//! credential winning over the upstream's, a replaced value forwarded at once (embedded store)
//! and by a second instance on the same Redis, and 502 `credential_unavailable` for a missing
//! credential and under the wrong master key, each logged once by name, never with a value.

mod common;

use common::gateway::{config_yaml, TestGateway, Upstreams, ADMIN_TOKEN};
use common::http::{send, Answer};
use common::instances::wait_subscribers;
use common::process::ServeProcess;
use common::redis::RedisServer;
use common::upstream::{Recorded, Upstream};
use http::Method;
use scopegate::credentials::MasterKey;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const VALUE: &str = "sk-live-7Hq2ZpXw9Lm4Rt8Vb1Nc6Yd3Kf5Gj0Ue";
const NEW_VALUE: &str = "sk-next-Qa9Wz2Sx7Ed3Rf5Tg1Yh8Uj4Ik6Ol0Pm";
const OTHER_VALUE: &str = "tok-other-Zr5Xc8Vb2Nm7Lk4Jh1Gf6Ds3Ap9";
const TENANT_VALUE: &str = "sk-tenant-Mn3Bv6Cx9Za2Sd5Fg8Hj1Kl4Qw7";
/// A generous bound for "within 1 s" on a shared machine; the measured time is printed.
const ROTATION_BOUND: Duration = Duration::from_secs(10);

/// The test config in front of `upstream`: `tools` injects `MY_API` the default way, `custom`
/// injects `OTHER` as `x-api-key: key=...`, `missing` names a credential nobody created.
fn yaml(
    upstream: &Upstream,
    redis: Option<&str>,
    dir: &std::path::Path,
    key: &MasterKey,
) -> String {
    std::fs::write(dir.join("master.key"), key.to_base64().as_str()).expect("key file");
    let tools = upstream.url();
    config_yaml(&Upstreams { tools: tools.clone() }, redis, &dir.join("data"))
        .replace("    timeout: 2s\n", "    timeout: 2s\n    credential: MY_API\n")
        .replace(
            "routes:\n",
            &format!(
                "  custom:\n    url: {tools}\n    credential: {{name: OTHER, header: x-api-key, format: \"key={{value}}\"}}\n  \
                 missing:\n    url: {tools}\n    credential: NEVER_CREATED\n\
                 credentials:\n  master_key_file: master.key\n\
                 routes:\n  \
                 - method: GET\n    path: /custom/{{x}}\n    scope: view_job_status\n    upstream: custom\n  \
                 - method: GET\n    path: /missing/{{x}}\n    scope: public\n    upstream: missing\n"
            ),
        )
}

async fn admin(admin: SocketAddr, method: Method, path: &str, body: Option<Value>) -> Answer {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    send(
        method,
        &format!("http://{admin}{path}"),
        &[
            ("authorization", &format!("Bearer {ADMIN_TOKEN}")),
            ("content-type", "application/json"),
        ],
        body,
    )
    .await
}

async fn store_credential(at: SocketAddr, name: &str, value: &str) {
    let body = json!({"name": name, "value": value});
    let answer = admin(at, Method::POST, "/v1/credentials", Some(body)).await;
    assert_eq!(answer.status, 201, "{:?}", answer.body);
}

async fn replace_credential(at: SocketAddr, name: &str, value: &str) {
    let path = format!("/v1/credentials/{name}");
    let answer = admin(at, Method::PUT, &path, Some(json!({"value": value}))).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
}

/// A key for a new app with `deploy_tool` and `view_job_status` (and `credentials`, if any).
async fn key_for(at: SocketAddr, credentials: Value) -> String {
    let body = json!({"name": format!("app-{}", common::gateway::rand_suffix()),
        "scopes": ["deploy_tool", "view_job_status"], "credentials": credentials});
    let app = admin(at, Method::POST, "/v1/apps", Some(body)).await;
    assert_eq!(app.status, 201, "{:?}", app.body);
    let id = app.json()["id"].as_str().expect("id").to_owned();
    let key = admin(
        at,
        Method::POST,
        &format!("/v1/apps/{id}/keys"),
        Some(json!({"name": "k"})),
    )
    .await;
    assert_eq!(key.status, 201);
    key.json()["key"].as_str().expect("key").to_owned()
}

/// A deploy with `headers`, and what the upstream received for it.
async fn deploy(proxy: SocketAddr, upstream: &Upstream, headers: &[(&str, &str)]) -> Recorded {
    let before = upstream.count();
    let answer = send(
        Method::POST,
        &format!("http://{proxy}/api/v1/tools/t1/deploy"),
        headers,
        "",
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(upstream.count(), before + 1);
    upstream.last()
}

fn only(recorded: &Recorded, header: &str) -> String {
    let values: Vec<_> = recorded.headers.get_all(header).iter().collect();
    assert_eq!(values.len(), 1, "{header}: {values:?}");
    values[0].to_str().expect("text").to_owned()
}

/// No header the upstream received holds the scopegate key.
fn no_key(recorded: &Recorded, key: &str) {
    for (name, value) in &recorded.headers {
        assert!(
            !String::from_utf8_lossy(value.as_bytes()).contains(key),
            "{name} carries the scopegate key"
        );
    }
}

#[tokio::test]
async fn injection_override_and_rotation_on_the_embedded_store() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let yaml = yaml(&upstream, None, dir.path(), &MasterKey::generate());
    let gw = TestGateway::start_in(&yaml, dir).await;
    store_credential(gw.admin, "MY_API", VALUE).await;
    store_credential(gw.admin, "OTHER", OTHER_VALUE).await;
    store_credential(gw.admin, "TENANT_A", TENANT_VALUE).await;
    let key = key_for(gw.admin, json!({})).await;

    // The default header; the key came as X-API-Key, the client's Authorization is dropped.
    let got = deploy(
        gw.proxy,
        &upstream,
        &[
            ("x-api-key", &key),
            ("authorization", "Basic Y2xpZW50OmNvcHk="),
        ],
    )
    .await;
    assert_eq!(only(&got, "authorization"), format!("Bearer {VALUE}"));
    no_key(&got, &key);
    // The key as a Bearer token: replaced by the upstream's credential, never passed on.
    let got = deploy(
        gw.proxy,
        &upstream,
        &[("authorization", &format!("Bearer {key}"))],
    )
    .await;
    assert_eq!(only(&got, "authorization"), format!("Bearer {VALUE}"));
    no_key(&got, &key);

    // A custom header and format; the key sent in that same header is not what arrives.
    let answer = send(
        Method::GET,
        &gw.url("/custom/1"),
        &[("x-api-key", &key)],
        "",
    )
    .await;
    assert_eq!(answer.status, 200);
    let got = upstream.last();
    assert_eq!(only(&got, "x-api-key"), format!("key={OTHER_VALUE}"));
    assert!(got.headers.get("authorization").is_none());
    no_key(&got, &key);

    // An app's own credential wins for its requests; others keep the upstream's.
    let tenant = key_for(gw.admin, json!({"tools": "TENANT_A"})).await;
    let got = deploy(gw.proxy, &upstream, &[("x-api-key", &tenant)]).await;
    assert_eq!(
        only(&got, "authorization"),
        format!("Bearer {TENANT_VALUE}")
    );
    no_key(&got, &tenant);
    let got = deploy(gw.proxy, &upstream, &[("x-api-key", &key)]).await;
    assert_eq!(only(&got, "authorization"), format!("Bearer {VALUE}"));

    // Upstreams naming a credential are in its `used_by` and hold its delete back.
    let shown = admin(gw.admin, Method::GET, "/v1/credentials/MY_API", None).await;
    assert_eq!(shown.json()["used_by"]["upstreams"], json!(["tools"]));
    let refused = admin(gw.admin, Method::DELETE, "/v1/credentials/OTHER", None).await;
    assert_eq!(refused.status, 409);
    assert!(refused.error_code() == "conflict");
    assert!(String::from_utf8_lossy(&refused.body).contains("custom"));

    // A replaced value is forwarded by the very next request.
    replace_credential(gw.admin, "MY_API", NEW_VALUE).await;
    let got = deploy(gw.proxy, &upstream, &[("x-api-key", &key)]).await;
    assert_eq!(only(&got, "authorization"), format!("Bearer {NEW_VALUE}"));

    // Use is recorded off the request path.
    let deadline = Instant::now() + ROTATION_BOUND;
    loop {
        let shown = admin(gw.admin, Method::GET, "/v1/credentials/MY_API", None).await;
        if shown.json()["last_used_at"].is_string() {
            break;
        }
        assert!(Instant::now() < deadline, "last_used_at never written");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A credential nobody created: 502, nothing forwarded.
    let before = upstream.count();
    let answer = send(Method::GET, &gw.url("/missing/1"), &[], "").await;
    assert_eq!(answer.status, 502);
    assert_eq!(answer.error_code(), "credential_unavailable");
    assert_eq!(upstream.count(), before);
}

#[tokio::test]
async fn a_second_instance_on_redis_forwards_a_replaced_value() {
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let master = MasterKey::generate();
    let mut gateways = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir().expect("dir");
        let yaml = yaml(&upstream, Some(&redis.url()), dir.path(), &master);
        gateways.push(TestGateway::start_in(&yaml, dir).await);
    }
    wait_subscribers(&redis.url(), 2).await;
    let (a, b) = (&gateways[0], &gateways[1]);
    store_credential(a.admin, "MY_API", VALUE).await;
    let key = key_for(a.admin, json!({})).await;
    // `b` holds the value opened in memory.
    for _ in 0..3 {
        let got = deploy(b.proxy, &upstream, &[("x-api-key", &key)]).await;
        assert_eq!(only(&got, "authorization"), format!("Bearer {VALUE}"));
    }
    replace_credential(a.admin, "MY_API", NEW_VALUE).await;
    let replaced = Instant::now();
    loop {
        let got = deploy(b.proxy, &upstream, &[("x-api-key", &key)]).await;
        if only(&got, "authorization") == format!("Bearer {NEW_VALUE}") {
            break;
        }
        assert!(
            replaced.elapsed() < ROTATION_BOUND,
            "b never saw the new value"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "the second instance forwarded the new value after {:?}",
        replaced.elapsed()
    );
}

/// Requests that need an unavailable credential, through the real binary: 502 each, one log
/// line naming it, the value nowhere in the log.
async fn refused_and_logged_once(serve: &ServeProcess, path: &str, key: &str, name: &str) {
    for _ in 0..5 {
        let answer = send(Method::POST, &serve.url(path), &[("x-api-key", key)], "").await;
        assert_eq!(answer.status, 502, "{path}: {:?}", answer.body);
        assert_eq!(answer.error_code(), "credential_unavailable");
        assert!(!String::from_utf8_lossy(&answer.body).contains(name));
    }
    let log = serve.output();
    let lines = log
        .lines()
        .filter(|l| l.contains("credential unavailable") && l.contains(name))
        .count();
    assert_eq!(lines, 1, "{log}");
    for value in [VALUE, NEW_VALUE] {
        assert!(!log.contains(value), "the log holds a value: {log}");
    }
}

#[tokio::test]
async fn missing_credentials_and_a_wrong_master_key_fail_with_502_logged_once() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let config = yaml(&upstream, None, dir.path(), &MasterKey::generate())
        // The missing credential's route, as a POST with a key.
        .replace(
            "path: /missing/{x}\n    scope: public",
            "path: /missing/{x}\n    scope: deploy_tool",
        )
        .replace(
            "  - method: GET\n    path: /missing",
            "  - method: POST\n    path: /missing",
        );
    let mut serve = ServeProcess::start(dir.path(), &config).await;
    store_credential(serve.admin, "MY_API", VALUE).await;
    let key = key_for(serve.admin, json!({})).await;
    let answer = send(
        Method::POST,
        &serve.url("/api/v1/tools/t1/deploy"),
        &[("x-api-key", &key)],
        "",
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        only(&upstream.last(), "authorization"),
        format!("Bearer {VALUE}")
    );
    refused_and_logged_once(&serve, "/missing/1", &key, "NEVER_CREATED").await;
    serve.stop().await;

    // Restarted under another master key: the stored value no longer opens.
    let other = MasterKey::generate();
    std::fs::write(dir.path().join("master.key"), other.to_base64().as_str()).expect("key");
    let mut serve = ServeProcess::start(dir.path(), &config).await;
    let before = upstream.count();
    refused_and_logged_once(&serve, "/api/v1/tools/t1/deploy", &key, "MY_API").await;
    assert_eq!(upstream.count(), before, "nothing was forwarded");
    serve.stop().await;
    let log = serve.output();
    for value in [VALUE, NEW_VALUE] {
        assert!(!log.contains(value), "the log holds a value");
    }
}

#[test]
fn check_refuses_a_credential_without_a_master_key_block() {
    let dir = tempfile::tempdir().expect("dir");
    let upstream_url = "http://127.0.0.1:9";
    let text = config_yaml(
        &Upstreams {
            tools: upstream_url.into(),
        },
        None,
        &dir.path().join("data"),
    )
    .replace(
        "    timeout: 2s\n",
        "    timeout: 2s\n    credential: MY_API\n",
    );
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, &text).expect("write");
    let errors = match scopegate::config::load(&path) {
        Ok(_) => panic!("accepted"),
        Err(e) => e.to_string(),
    };
    let line = text
        .lines()
        .position(|l| l.contains("credential: MY_API"))
        .expect("line")
        + 1;
    assert!(
        errors.contains(&format!(
            "gateway.yaml:{line}:17: upstreams.tools.credential"
        )),
        "{errors}"
    );
    assert!(errors.contains("credentials:"), "{errors}");
}

#[test]
fn check_reports_a_bad_credential_use_at_its_field() {
    let dir = tempfile::tempdir().expect("dir");
    let base = config_yaml(
        &Upstreams {
            tools: "http://127.0.0.1:9".into(),
        },
        None,
        &dir.path().join("data"),
    ) + "credentials:\n  master_key_env: SCOPEGATE_TEST_UNSET_MASTER_KEY\n";
    let cases = [
        (
            "credential: {name: A, format: \"Bearer\"}",
            "credential.format",
            "exactly once",
        ),
        (
            "credential: {name: A, format: \"{value}{value}\"}",
            "credential.format",
            "exactly once",
        ),
        (
            "credential: {name: A, header: \"bad header\"}",
            "credential.header",
            "not a header name",
        ),
        (
            "credential: {name: A, header: host}",
            "credential.header",
            "set by the gateway",
        ),
        (
            "credential: {name: \"a b\"}",
            "credential.name",
            "credential name",
        ),
        ("credential: \"a.b\"", "tools.credential", "credential name"),
        (
            "credential: {name: A, extra: 1}",
            "credential",
            "unknown field",
        ),
    ];
    let path = dir.path().join("gateway.yaml");
    for (entry, field, message) in cases {
        let text = base.replace(
            "    timeout: 2s\n",
            &format!("    timeout: 2s\n    {entry}\n"),
        );
        let errors = match scopegate::config::parse(&path, &text) {
            Ok(_) => panic!("{entry} accepted"),
            Err(e) => e.to_string(),
        };
        assert!(
            errors.contains(field) && errors.contains(message),
            "{entry}: {errors}"
        );
    }
    let fine = base.replace(
        "    timeout: 2s\n",
        "    timeout: 2s\n    credential: {name: A, header: x-api-key, format: \"{value}\"}\n",
    );
    let config = scopegate::config::parse(&path, &fine).unwrap_or_else(|e| panic!("{e}"));
    let tools = &config.upstreams[0];
    let credential = tools.credential.as_ref().expect("credential");
    assert_eq!(&*credential.name, "A");
    assert_eq!(credential.header, "x-api-key");
    assert_eq!(
        (&*credential.format.prefix, &*credential.format.suffix),
        ("", "")
    );
}
