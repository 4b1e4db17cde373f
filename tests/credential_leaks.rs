//! The leak tests of upstream credentials: after a scenario, neither Redis, nor the embedded
//! store's files, nor a gateway's debug log, `/metrics` or admin answers hold a value or its
//! base64. The admin-only scenarios run on each store; the traffic scenario runs two real
//! processes on one Redis with injected requests through both, a replacement and a 502.

mod common;

use base64::Engine;
use common::credentials::{
    admin_call, assert_clean, create, process_yaml, redis_contents, NEW_VALUE, TENANT_VALUE, VALUE,
};
use common::instances::wait_subscribers;
use common::process::ServeProcess;
use common::redis::RedisServer;
use common::upstream::Upstream;
use http::Method;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// The scenario of the admin-only leak tests: every write and read there is, a rejected value
/// that holds the secret, and an app naming the credential; every answer is checked.
async fn full_scenario(admin: std::net::SocketAddr) {
    assert_eq!(
        admin_call(
            admin,
            Method::POST,
            "/v1/credentials",
            Some(create("MY_API", VALUE))
        )
        .await
        .status,
        201
    );
    let bad = json!({"name": "BAD", "value": format!("{VALUE}\r\nX-Evil: 1")});
    assert_eq!(
        admin_call(admin, Method::POST, "/v1/credentials", Some(bad))
            .await
            .status,
        422
    );
    let bad_type = json!({"name": "BAD", "value": VALUE, "description": [VALUE]});
    assert_eq!(
        admin_call(admin, Method::POST, "/v1/credentials", Some(bad_type))
            .await
            .status,
        422
    );
    assert_eq!(
        admin_call(
            admin,
            Method::POST,
            "/v1/credentials",
            Some(create("MY_API", VALUE))
        )
        .await
        .status,
        409
    );
    let app = json!({"name": "tenant", "scopes": [], "credentials": {"tools": "MY_API"}});
    assert_eq!(
        admin_call(admin, Method::POST, "/v1/apps", Some(app))
            .await
            .status,
        201
    );
    assert_eq!(
        admin_call(admin, Method::GET, "/v1/credentials", None)
            .await
            .status,
        200
    );
    assert_eq!(
        admin_call(admin, Method::GET, "/v1/credentials/MY_API", None)
            .await
            .status,
        200
    );
    let replace = json!({"value": NEW_VALUE, "description": "rotated"});
    assert_eq!(
        admin_call(admin, Method::PUT, "/v1/credentials/MY_API", Some(replace))
            .await
            .status,
        200
    );
    assert_eq!(
        admin_call(
            admin,
            Method::POST,
            "/v1/credentials",
            Some(create("GONE", VALUE))
        )
        .await
        .status,
        201
    );
    assert_eq!(
        admin_call(admin, Method::DELETE, "/v1/credentials/GONE", None)
            .await
            .status,
        204
    );
    assert_eq!(
        admin_call(admin, Method::DELETE, "/v1/credentials/MY_API", None)
            .await
            .status,
        409
    );
    let audit = admin_call(admin, Method::GET, "/v1/audit", None).await;
    assert_eq!(audit.status, 200, "the audit answer was checked too");
}

/// The leak tests read the most talkative log there is short of tracing every byte.
const DEBUG_LOG: &[(&str, &str)] = &[("RUST_LOG", "debug")];

#[tokio::test]
async fn no_plaintext_in_the_embedded_store_files_or_the_log() {
    let dir = tempfile::tempdir().expect("dir");
    let yaml = process_yaml(dir.path(), None);
    let mut serve = ServeProcess::start_with_env(dir.path(), &yaml, DEBUG_LOG).await;
    full_scenario(serve.admin).await;
    serve.stop().await;
    let mut files = 0;
    let mut pending = vec![dir.path().join("data")];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder).expect("data folder") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                pending.push(path);
            } else {
                assert_clean(
                    &path.display().to_string(),
                    &std::fs::read(&path).expect("file"),
                );
                files += 1;
            }
        }
    }
    assert!(files > 0, "the store wrote its file");
    let log = serve.output();
    assert!(
        log.contains("credential.created"),
        "the log is the gateway's: {log}"
    );
    assert!(
        log.contains("admin call refused"),
        "debug lines, refusals included: {log}"
    );
    assert_clean("the log", log.as_bytes());
}

#[tokio::test]
async fn no_plaintext_in_redis_or_the_log() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("dir");
    let mut serve = ServeProcess::start_with_env(
        dir.path(),
        &process_yaml(dir.path(), Some(&redis.url())),
        DEBUG_LOG,
    )
    .await;
    full_scenario(serve.admin).await;
    serve.stop().await;
    let contents = redis_contents(&redis.url()).await;
    assert!(
        contents.iter().any(|(k, _)| k == "sg:cred:MY_API"),
        "the credential is stored: {:?}",
        contents.iter().map(|(k, _)| k).collect::<Vec<_>>()
    );
    for (key, value) in &contents {
        assert_clean(key, value);
    }
    let log = serve.output();
    assert!(
        log.contains("credential.updated"),
        "the log is the gateway's: {log}"
    );
    assert!(
        log.contains("admin call refused"),
        "debug lines, refusals included: {log}"
    );
    assert_clean("the log", log.as_bytes());
}

/// The leak check itself finds the plaintext, and its base64 inside a longer base64.
#[test]
fn the_leak_check_finds_a_leak() {
    let mut sealed_like = b"prefix".to_vec();
    sealed_like.extend_from_slice(VALUE.as_bytes());
    let encoded = base64::engine::general_purpose::STANDARD.encode(&sealed_like);
    for dirty in [
        format!("log line value={VALUE} end"),
        format!("{{\"v\":\"{encoded}\"}}"),
    ] {
        let caught = std::panic::catch_unwind(|| assert_clean("dirty", dirty.as_bytes()));
        assert!(caught.is_err(), "{dirty}");
    }
    assert_clean("clean", b"sk-****************************************0Ue");
}
/// A generous bound for "every instance forwards a replaced value within 1 s" on a shared
/// machine (the rotation tests in `credential_injection.rs` print the time it took).
const ROTATION_BOUND: Duration = Duration::from_secs(10);

/// The process config on `redis` in front of `upstream`: `tools` injects `MY_API` the default
/// way (`Authorization: Bearer …`), `missing` names a credential nobody creates, behind
/// `GET /missing/{x}`.
fn traffic_yaml(dir: &std::path::Path, redis: &str, upstream: &Upstream) -> String {
    let url = upstream.url();
    process_yaml(dir, Some(redis))
        .replace("http://127.0.0.1:9", &url)
        .replace(
            "    timeout: 2s\n",
            "    timeout: 2s\n    credential: MY_API\n",
        )
        .replace(
            "routes:\n",
            &format!(
                "  missing:\n    url: {url}\n    credential: NEVER_CREATED\n\
                 routes:\n  \
                 - method: GET\n    path: /missing/{{x}}\n    scope: public\n    upstream: missing\n"
            ),
        )
}

/// A key of a new app allowed to deploy, naming `credentials` for its upstreams.
async fn deploy_key(admin: std::net::SocketAddr, credentials: Value) -> String {
    let app = json!({"name": format!("app-{}", common::gateway::rand_suffix()),
        "scopes": ["deploy_tool"], "credentials": credentials});
    let made = admin_call(admin, Method::POST, "/v1/apps", Some(app)).await;
    assert_eq!(made.status, 201, "{:?}", made.body);
    let id = made.json()["id"].as_str().expect("id").to_owned();
    let path = format!("/v1/apps/{id}/keys");
    let key = admin_call(admin, Method::POST, &path, Some(json!({"name": "k"}))).await;
    assert_eq!(key.status, 201, "{:?}", key.body);
    key.json()["key"].as_str().expect("key").to_owned()
}

/// A deploy through `serve` with `key`: the `Authorization` the upstream received for it. The
/// client's own answer holds no secret.
async fn forwarded(serve: &ServeProcess, upstream: &Upstream, key: &str) -> String {
    let before = upstream.count();
    let url = serve.url("/api/v1/tools/t1/deploy");
    let answer = common::http::send(Method::POST, &url, &[("x-api-key", key)], "").await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_clean("a proxied answer", format!("{answer:?}").as_bytes());
    assert_eq!(upstream.count(), before + 1);
    let got = upstream.last();
    let values: Vec<_> = got.headers.get_all("authorization").iter().collect();
    assert_eq!(values.len(), 1, "one Authorization: {values:?}");
    values[0].to_str().expect("text").to_owned()
}

/// Deploys through `serve` until the upstream receives `Bearer {value}`, within the bound.
async fn until_forwarded(serve: &ServeProcess, upstream: &Upstream, key: &str, value: &str) {
    let since = Instant::now();
    while forwarded(serve, upstream, key).await != format!("Bearer {value}") {
        assert!(
            since.elapsed() < ROTATION_BOUND,
            "{} never forwarded the new value",
            serve.proxy
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `/metrics` of `serve` now, checked.
async fn metrics_clean(serve: &ServeProcess) {
    let url = format!("http://{}/metrics", serve.metrics);
    let scrape = common::http::get(&url, &[]).await;
    assert_eq!(scrape.status, 200);
    let text = String::from_utf8_lossy(&scrape.body);
    assert!(text.contains("# TYPE"), "a real scrape: {text}");
    assert_clean("/metrics", &scrape.body);
}

#[tokio::test]
async fn no_plaintext_anywhere_after_injected_traffic_through_two_instances_on_redis() {
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let dirs = [
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    ];
    let yamls = dirs
        .each_ref()
        .map(|d| traffic_yaml(d.path(), &redis.url(), &upstream));
    // One master key for both: the first instance's.
    let key_file = |d: &tempfile::TempDir| d.path().join("master.key");
    std::fs::copy(key_file(&dirs[0]), key_file(&dirs[1])).expect("share the master key");
    let mut instances = Vec::new();
    for (dir, yaml) in dirs.iter().zip(&yamls) {
        instances.push(ServeProcess::start_with_env(dir.path(), yaml, DEBUG_LOG).await);
    }
    wait_subscribers(&redis.url(), 2).await;

    let a = instances[0].admin;
    for (name, value) in [("MY_API", VALUE), ("TENANT_A", TENANT_VALUE)] {
        let made = admin_call(
            a,
            Method::POST,
            "/v1/credentials",
            Some(create(name, value)),
        )
        .await;
        assert_eq!(made.status, 201, "{:?}", made.body);
    }
    let plain = deploy_key(a, json!({})).await;
    let tenant = deploy_key(a, json!({"tools": "TENANT_A"})).await;

    // Both instances inject the upstream's value, and the tenant's own for its app.
    for serve in &instances {
        for _ in 0..2 {
            let got = forwarded(serve, &upstream, &plain).await;
            assert_eq!(got, format!("Bearer {VALUE}"));
            let got = forwarded(serve, &upstream, &tenant).await;
            assert_eq!(got, format!("Bearer {TENANT_VALUE}"));
        }
        metrics_clean(serve).await;
    }

    // Replaced on `a` (after a refused replacement that holds the new value), forwarded by both.
    let bad = json!({"value": format!("{NEW_VALUE}\r\nX-Evil: 1")});
    let refused = admin_call(a, Method::PUT, "/v1/credentials/MY_API", Some(bad)).await;
    assert_eq!(refused.status, 422);
    let replace = json!({"value": NEW_VALUE});
    let replaced = admin_call(a, Method::PUT, "/v1/credentials/MY_API", Some(replace)).await;
    assert_eq!(replaced.status, 200, "{:?}", replaced.body);
    for serve in instances.iter().rev() {
        until_forwarded(serve, &upstream, &plain, NEW_VALUE).await;
        let got = forwarded(serve, &upstream, &tenant).await;
        assert_eq!(
            got,
            format!("Bearer {TENANT_VALUE}"),
            "the app's own still wins"
        );
    }

    // A credential nobody created: 502 on both, nothing forwarded.
    let before = upstream.count();
    for serve in &instances {
        let answer = common::http::send(Method::GET, &serve.url("/missing/1"), &[], "").await;
        assert_eq!(answer.status, 502, "{:?}", answer.body);
        assert_eq!(answer.error_code(), "credential_unavailable");
    }
    assert_eq!(upstream.count(), before);

    // Every admin read there is, on both; a refused write on `b` too.
    for serve in &instances {
        for path in [
            "/v1/credentials",
            "/v1/credentials?search=my",
            "/v1/credentials/MY_API",
            "/v1/credentials/TENANT_A",
            "/v1/apps",
            "/v1/audit",
        ] {
            let answer = admin_call(serve.admin, Method::GET, path, None).await;
            assert_eq!(answer.status, 200, "{path}");
        }
        metrics_clean(serve).await;
    }
    let again = create("MY_API", VALUE);
    let conflict = admin_call(
        instances[1].admin,
        Method::POST,
        "/v1/credentials",
        Some(again),
    )
    .await;
    assert_eq!(conflict.status, 409);

    // The upstream did receive every value: injection happened.
    let received: Vec<String> = upstream
        .requests()
        .iter()
        .filter_map(|r| {
            r.headers
                .get("authorization")?
                .to_str()
                .ok()
                .map(str::to_owned)
        })
        .collect();
    for value in [VALUE, NEW_VALUE, TENANT_VALUE] {
        assert!(
            received.contains(&format!("Bearer {value}")),
            "{value} not received"
        );
    }
    let upstream_saw = received.join("\n");
    let caught = std::panic::catch_unwind(|| assert_clean("upstream", upstream_saw.as_bytes()));
    assert!(
        caught.is_err(),
        "the check finds the values where they belong"
    );

    for serve in &mut instances {
        serve.stop().await;
    }
    let contents = redis_contents(&redis.url()).await;
    assert!(
        contents.iter().any(|(k, _)| k == "sg:cred:MY_API"),
        "the credential is stored"
    );
    for (key, value) in &contents {
        assert_clean(key, value);
    }
    for (serve, name) in instances.iter().zip(["a", "b"]) {
        let log = serve.output();
        let has = |text: &str| log.contains(text);
        assert!(has("admin call refused"), "{name}: debug lines: {log}");
        assert!(
            has("cache invalidation"),
            "{name}: the replacement was announced: {log}"
        );
        assert!(
            has("upstream credential unavailable") && has("NEVER_CREATED"),
            "{name}: the 502 was logged: {log}"
        );
        assert_clean(&format!("{name}'s log"), log.as_bytes());
    }
}
