//! Roles of admin tokens over real sockets: `read` may only GET, `operator` may also manage
//! keys, `admin` may do everything; a refusal is 403 `forbidden` and changes nothing, and an
//! unknown path stays 404 whatever the role. `check` refuses an unknown role with its position.

mod common;

use common::gateway::{config_yaml, TestGateway, Upstreams, ADMIN_TOKEN};
use http::Method;
use serde_json::{json, Value};

const ADMIN: &str = ADMIN_TOKEN;
const ALICE: &str = "t-alice";
const BOSS: &str = "t-boss";
const CI: &str = "t-ci";
const VIEWER: &str = "t-viewer";

const TOKENS: &str = concat!(
    "  tokens:\n",
    "    alice: ALICE_TOKEN\n",
    "    boss: {env: BOSS_TOKEN, role: admin}\n",
    "    ci: {env: CI_TOKEN, role: operator}\n",
    "    viewer:\n",
    "      env: VIEWER_TOKEN\n",
    "      role: read\n",
);

/// The test config with `admin.tokens` naming one identity of each role.
fn yaml_with_roles(dir: &std::path::Path) -> String {
    let upstreams = Upstreams {
        tools: "http://127.0.0.1:9".into(),
    };
    let yaml = config_yaml(&upstreams, None, &dir.join("data"));
    let marker = "  token_env: SCOPEGATE_TEST_UNUSED_TOKEN\n";
    assert!(yaml.contains(marker));
    yaml.replace(marker, &format!("{marker}{TOKENS}"))
}

async fn gateway() -> TestGateway {
    let dir = tempfile::tempdir().expect("dir");
    let yaml = yaml_with_roles(dir.path());
    let tokens = [
        ("admin", ADMIN),
        ("alice", ALICE),
        ("boss", BOSS),
        ("ci", CI),
        ("viewer", VIEWER),
    ];
    TestGateway::start_with_tokens(&yaml, dir, &tokens).await
}

async fn call(
    gw: &TestGateway,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let answer = gw.admin_as(token, method, path, body).await;
    let body = if answer.body.is_empty() {
        Value::Null
    } else {
        answer.json()
    };
    (answer.status.as_u16(), body)
}

fn assert_forbidden((status, body): (u16, Value), what: &str) {
    assert_eq!(status, 403, "{what}: {body}");
    assert_eq!(body["error"]["code"], "forbidden", "{what}");
}

async fn app_count(gw: &TestGateway) -> usize {
    let (status, apps) = call(gw, ADMIN, Method::GET, "/v1/apps", None).await;
    assert_eq!(status, 200);
    apps.as_array().expect("array").len()
}

/// An app (made by `admin`) and a key for it; (app id, key id).
async fn app_and_key(gw: &TestGateway, name: &str) -> (String, String) {
    let app = gw.create_app(name, &["view_job_status"]).await;
    let (key, _) = gw.create_key(&app, None).await;
    (app, key)
}

#[tokio::test]
async fn a_read_token_may_only_get() {
    let gw = gateway().await;
    let (app, key) = app_and_key(&gw, "seen").await;
    for path in [
        "/v1/apps".to_owned(),
        format!("/v1/apps/{app}"),
        format!("/v1/apps/{app}/keys"),
        "/v1/keys".to_owned(),
        format!("/v1/keys/{key}"),
        "/v1/scopes".to_owned(),
        "/v1/routes".to_owned(),
    ] {
        assert_eq!(
            call(&gw, VIEWER, Method::GET, &path, None).await.0,
            200,
            "{path}"
        );
    }

    let new_app = json!({"name": "by-viewer", "scopes": []});
    assert_forbidden(
        call(&gw, VIEWER, Method::POST, "/v1/apps", Some(new_app)).await,
        "POST /v1/apps",
    );
    let new_key = json!({"name": "k"});
    let keys = format!("/v1/apps/{app}/keys");
    assert_forbidden(
        call(&gw, VIEWER, Method::POST, &keys, Some(new_key)).await,
        "POST keys",
    );
    let one_key = format!("/v1/keys/{key}");
    assert_forbidden(
        call(&gw, VIEWER, Method::DELETE, &one_key, None).await,
        "DELETE key",
    );
    let patch = json!({"name": "renamed"});
    let one_app = format!("/v1/apps/{app}");
    assert_forbidden(
        call(&gw, VIEWER, Method::PATCH, &one_app, Some(patch)).await,
        "PATCH app",
    );

    // Nothing was done on its behalf.
    assert_eq!(app_count(&gw).await, 1);
    let (_, listed) = call(&gw, ADMIN, Method::GET, &keys, None).await;
    assert_eq!(listed.as_array().expect("keys").len(), 1);
    assert_eq!(call(&gw, ADMIN, Method::GET, &one_key, None).await.0, 200);
    // An unknown path is 404 for every role, not 403.
    assert_eq!(
        call(&gw, VIEWER, Method::POST, "/v1/nothing", None).await.0,
        404
    );
    assert_eq!(
        call(&gw, CI, Method::DELETE, "/v1/nothing/here", None)
            .await
            .0,
        404
    );
}

#[tokio::test]
async fn an_operator_manages_keys_but_not_apps() {
    let gw = gateway().await;
    let (app, _) = app_and_key(&gw, "ops").await;

    let (status, created) = call(
        &gw,
        CI,
        Method::POST,
        &format!("/v1/apps/{app}/keys"),
        Some(json!({"name": "deploy bot"})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["created_by"], "ci");
    assert!(created["key"]
        .as_str()
        .is_some_and(|k| k.starts_with("sg_")));
    let key = created["id"].as_str().expect("id").to_owned();
    assert_eq!(
        call(&gw, CI, Method::GET, &format!("/v1/keys/{key}"), None)
            .await
            .0,
        200
    );
    assert_eq!(
        call(&gw, CI, Method::DELETE, &format!("/v1/keys/{key}"), None)
            .await
            .0,
        204
    );

    let one_app = format!("/v1/apps/{app}");
    let new_app = json!({"name": "by-ci", "scopes": []});
    assert_forbidden(
        call(&gw, CI, Method::POST, "/v1/apps", Some(new_app)).await,
        "POST /v1/apps",
    );
    let patch = json!({"scopes": []});
    assert_forbidden(
        call(&gw, CI, Method::PATCH, &one_app, Some(patch)).await,
        "PATCH app",
    );
    assert_forbidden(
        call(&gw, CI, Method::DELETE, &one_app, None).await,
        "DELETE app",
    );

    let (status, kept) = call(&gw, ADMIN, Method::GET, &one_app, None).await;
    assert_eq!(status, 200, "the app is still there");
    assert_eq!(kept["scopes"], json!(["view_job_status"]));
    assert_eq!(app_count(&gw).await, 1);
}

#[tokio::test]
async fn admin_tokens_may_do_everything() {
    let gw = gateway().await;
    // `admin` (token_env), a bare `name: VAR` entry, and an explicit `role: admin`.
    for (i, token) in [ADMIN, ALICE, BOSS].into_iter().enumerate() {
        let (status, app) = call(
            &gw,
            token,
            Method::POST,
            "/v1/apps",
            Some(json!({"name": format!("app-{i}"), "scopes": ["view_job_status"]})),
        )
        .await;
        assert_eq!(status, 201, "{token}: {app}");
        let one_app = format!("/v1/apps/{}", app["id"].as_str().expect("id"));
        let patch = json!({"name": format!("renamed-{i}")});
        assert_eq!(
            call(&gw, token, Method::PATCH, &one_app, Some(patch))
                .await
                .0,
            200
        );
        let keys = format!("{one_app}/keys");
        let (status, key) = call(&gw, token, Method::POST, &keys, Some(json!({"name": "k"}))).await;
        assert_eq!(status, 201, "{token}: {key}");
        let one_key = format!("/v1/keys/{}", key["id"].as_str().expect("id"));
        assert_eq!(
            call(&gw, token, Method::DELETE, &one_key, None).await.0,
            204
        );
        assert_eq!(
            call(&gw, token, Method::DELETE, &one_app, None).await.0,
            204
        );
    }
    let (_, app) = call(
        &gw,
        ALICE,
        Method::POST,
        "/v1/apps",
        Some(json!({"name": "a", "scopes": []})),
    )
    .await;
    assert_eq!(app["created_by"], "alice");
}

#[tokio::test]
async fn check_refuses_an_unknown_role_with_its_position() {
    let dir = tempfile::tempdir().expect("dir");
    let yaml = yaml_with_roles(dir.path()).replace("role: operator", "role: root");
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, &yaml).expect("write");
    let (line, column) = yaml
        .lines()
        .enumerate()
        .find_map(|(i, l)| l.find("root").map(|c| (i + 1, c + 1)))
        .expect("the role is in the file");

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_scopegate"))
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .await
        .expect("run check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let printed = format!("{stdout}{stderr}");
    assert_eq!(out.status.code(), Some(1), "{printed}");
    let expected = format!(
        "{}:{line}:{column}: admin.tokens.ci.role: unknown role \"root\"",
        path.display()
    );
    assert!(printed.contains(&expected), "{printed}\nlacks {expected}");

    // The same file with a known role is fine.
    std::fs::write(&path, yaml.replace("role: root", "role: operator")).expect("write");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_scopegate"))
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .await
        .expect("run check");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
    assert!(out.status.success());
}
