//! The admin API over real sockets: auth, validation, listing, masking, identities.

mod common;

use common::gateway::{config_yaml, TestGateway, Upstreams, ADMIN_TOKEN};
use common::http::{get, send};
use http::Method;
use serde_json::json;

async fn gateway() -> TestGateway {
    let dir = tempfile::tempdir().expect("dir");
    let yaml = config_yaml(
        &Upstreams {
            tools: "http://127.0.0.1:9".into(),
        },
        None,
        &dir.path().join("data"),
    );
    TestGateway::start_in(&yaml, dir).await
}

#[tokio::test]
async fn every_call_needs_the_admin_token() {
    let gw = gateway().await;
    let url = format!("http://{}/v1/apps", gw.admin);
    for headers in [
        vec![],
        vec![("authorization", "Bearer wrong")],
        vec![("authorization", "Basic x")],
    ] {
        let answer = get(&url, &headers).await;
        assert_eq!(
            (answer.status.as_u16(), answer.error_code().as_str()),
            (401, "unauthorized")
        );
    }
    let auth = format!("Bearer {ADMIN_TOKEN}");
    assert_eq!(get(&url, &[("authorization", &auth)]).await.status, 200);
}

#[tokio::test]
async fn scopes_come_from_the_config() {
    let gw = gateway().await;
    let scopes = gw.admin(Method::GET, "/v1/scopes", None).await.json();
    let names: Vec<&str> = scopes
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "deploy_tool",
            "deploy_model",
            "view_job_status",
            "upload_file"
        ]
    );
    assert_eq!(scopes[0]["description"], "Deploy a tool");
}

#[tokio::test]
async fn apps_are_validated_and_conflicts_refused() {
    let gw = gateway().await;
    let cases = [
        (json!({"name": "", "scopes": []}), 422, "name"),
        (json!({"name": "  ", "scopes": []}), 422, "name"),
        (json!({"name": "x", "scopes": ["nope"]}), 422, "scopes"),
        (
            json!({"name": "x", "scopes": [], "rate_limit": {"per_second": 0, "burst": 1}}),
            422,
            "rate_limit",
        ),
        (json!({"scopes": []}), 422, "name"),
        (
            json!({"name": "x", "scopes": [], "colour": "red"}),
            422,
            "colour",
        ),
    ];
    for (body, status, field) in cases {
        let answer = gw.admin(Method::POST, "/v1/apps", Some(body.clone())).await;
        assert_eq!(answer.status.as_u16(), status, "{body}");
        assert_eq!(answer.error_code(), "invalid_request");
        let message = answer.json()["error"]["message"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        assert!(message.contains(field), "{body}: {message}");
    }
    let answer = send(
        Method::POST,
        &format!("http://{}/v1/apps", gw.admin),
        &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
        "{not json",
    )
    .await;
    assert_eq!(
        (answer.status.as_u16(), answer.error_code().as_str()),
        (400, "bad_request")
    );

    let created = gw
        .admin(Method::POST, "/v1/apps", Some(json!({"name": "Agents", "scopes": ["deploy_tool"], "rate_limit": {"per_second": 5, "burst": 10}})))
        .await;
    assert_eq!(created.status, 201);
    let app = created.json();
    assert_eq!(app["name"], "Agents");
    assert_eq!(app["scopes"], json!(["deploy_tool"]));
    assert_eq!(app["rate_limit"], json!({"per_second": 5, "burst": 10}));
    assert_eq!(app["created_by"], "admin");
    assert!(app["created_at"].as_str().expect("time").ends_with('Z'));
    let again = gw
        .admin(
            Method::POST,
            "/v1/apps",
            Some(json!({"name": "agents", "scopes": []})),
        )
        .await;
    assert_eq!(
        (again.status.as_u16(), again.error_code().as_str()),
        (409, "conflict")
    );
}

#[tokio::test]
async fn apps_list_search_get_update_delete() {
    let gw = gateway().await;
    let a = gw.create_app("Tool Runner", &["deploy_tool"]).await;
    let b = gw.create_app("model-loader", &["deploy_model"]).await;
    let all = gw.admin(Method::GET, "/v1/apps", None).await.json();
    assert_eq!(all.as_array().expect("list").len(), 2);
    let found = gw
        .admin(Method::GET, "/v1/apps?search=RUNNER", None)
        .await
        .json();
    assert_eq!(found.as_array().expect("list").len(), 1);
    assert_eq!(found[0]["id"], a.as_str());

    let patched = gw
        .admin(
            Method::PATCH,
            &format!("/v1/apps/{b}"),
            Some(json!({"name": "Model Loader", "scopes": ["deploy_model", "upload_file"]})),
        )
        .await;
    assert_eq!(patched.status, 200);
    assert_eq!(
        patched.json()["scopes"],
        json!(["deploy_model", "upload_file"])
    );
    let conflict = gw
        .admin(
            Method::PATCH,
            &format!("/v1/apps/{b}"),
            Some(json!({"name": "tool runner"})),
        )
        .await;
    assert_eq!(conflict.status, 409);
    let bad = gw
        .admin(
            Method::PATCH,
            &format!("/v1/apps/{b}"),
            Some(json!({"scopes": ["nope"]})),
        )
        .await;
    assert_eq!(bad.status, 422);
    assert_eq!(
        gw.admin(Method::GET, &format!("/v1/apps/{b}"), None)
            .await
            .json()["name"],
        "Model Loader"
    );

    assert_eq!(
        gw.admin(Method::DELETE, &format!("/v1/apps/{a}"), None)
            .await
            .status,
        204
    );
    let gone = gw.admin(Method::GET, &format!("/v1/apps/{a}"), None).await;
    assert_eq!(
        (gone.status.as_u16(), gone.error_code().as_str()),
        (404, "not_found")
    );
    assert_eq!(
        gw.admin(Method::DELETE, &format!("/v1/apps/{a}"), None)
            .await
            .status,
        404
    );
    assert_eq!(
        gw.admin(
            Method::PATCH,
            &format!("/v1/apps/{a}"),
            Some(json!({"name": "z"}))
        )
        .await
        .status,
        404
    );
}

#[tokio::test]
async fn keys_are_shown_once_then_only_masked() {
    let gw = gateway().await;
    let app = gw.create_app("keyed", &["deploy_tool"]).await;
    let created = gw
        .admin(
            Method::POST,
            &format!("/v1/apps/{app}/keys"),
            Some(json!({"name": "ci", "expires_in_days": 30})),
        )
        .await;
    assert_eq!(created.status, 201);
    let key = created.json();
    let full = key["key"].as_str().expect("full key").to_owned();
    let id = key["id"].as_str().expect("id").to_owned();
    assert!(full.starts_with(&format!("sg_{id}_")));
    let secret = full.rsplit('_').next().expect("secret");
    assert!(secret.len() >= 22 && secret.chars().all(|c| c.is_ascii_alphanumeric()));
    let masked = key["masked"].as_str().expect("masked");
    assert_eq!(masked.len(), full.len());
    assert_eq!(&masked[..4], &full[..4]);
    assert_eq!(&masked[masked.len() - 4..], &full[full.len() - 4..]);
    assert_eq!(masked.matches('*').count(), full.len() - 8);
    assert_eq!(key["status"], "active");
    assert_eq!(key["app_id"], app.as_str());
    assert!(key["expires_at"].is_string());
    assert!(key["last_used_at"].is_null());

    for path in [
        format!("/v1/keys/{id}"),
        format!("/v1/apps/{app}/keys"),
        "/v1/keys".to_owned(),
        "/v1/keys?search=C".to_owned(),
    ] {
        let answer = gw.admin(Method::GET, &path, None).await;
        assert_eq!(answer.status, 200, "{path}");
        let text = String::from_utf8_lossy(&answer.body).into_owned();
        assert!(!text.contains(secret), "{path} must never show the secret");
        assert!(
            !text.contains("\"key\""),
            "{path} must not carry the key field"
        );
        assert!(text.contains(masked), "{path}");
    }
    let none = gw
        .admin(Method::GET, "/v1/keys?search=zzz", None)
        .await
        .json();
    assert_eq!(none.as_array().expect("list").len(), 0);

    let bad = [
        json!({"name": ""}),
        json!({"name": "x", "expires_in_days": 0}),
        json!({"name": "x", "expires_in_days": "soon"}),
    ];
    for body in bad {
        assert_eq!(
            gw.admin(Method::POST, &format!("/v1/apps/{app}/keys"), Some(body))
                .await
                .status,
            422
        );
    }
    assert_eq!(
        gw.admin(
            Method::POST,
            "/v1/apps/nosuchapp/keys",
            Some(json!({"name": "x"}))
        )
        .await
        .status,
        404
    );
    assert_eq!(
        gw.admin(Method::DELETE, &format!("/v1/keys/{id}"), None)
            .await
            .status,
        204
    );
    // Revoked, not gone: still shown (masked), with who and when; revoking again is a no-op.
    let revoked = gw.admin(Method::GET, &format!("/v1/keys/{id}"), None).await;
    assert_eq!(revoked.status, 200);
    let revoked = revoked.json();
    assert_eq!(revoked["status"], "revoked");
    assert_eq!(revoked["revoked_by"], "admin");
    assert!(revoked["revoked_at"].is_string());
    assert!(revoked.get("key").is_none());
    assert_eq!(
        gw.admin(Method::DELETE, &format!("/v1/keys/{id}"), None)
            .await
            .status,
        204
    );
    assert_eq!(
        gw.admin(Method::DELETE, "/v1/keys/nosuchkey", None)
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn created_by_names_the_identity_whose_token_was_used() {
    let dir = tempfile::tempdir().expect("dir");
    let yaml = config_yaml(
        &Upstreams {
            tools: "http://127.0.0.1:9".into(),
        },
        None,
        &dir.path().join("data"),
    );
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, yaml).expect("write");
    let config = scopegate::config::load(&path).expect("config");
    let tokens = vec![
        ("admin".to_owned(), "t-admin".to_owned()),
        ("alice".to_owned(), "t-alice".to_owned()),
    ];
    let gw = scopegate::gateway::start(config, tokens)
        .await
        .expect("start");
    let answer = send(
        Method::POST,
        &format!("http://{}/v1/apps", gw.admin_addr),
        &[("authorization", "Bearer t-alice")],
        json!({"name": "by-alice", "scopes": []}).to_string(),
    )
    .await;
    assert_eq!(answer.status, 201);
    assert_eq!(answer.json()["created_by"], "alice");
    gw.shutdown().await;
}

#[tokio::test]
async fn names_with_control_characters_are_refused() {
    let gw = gateway().await;
    let app = gw.create_app("clean", &["deploy_tool"]).await;
    // ESC (an OSC 52 clipboard write), a C1 CSI, DEL, newline, tab, NUL.
    let hostile = [
        "evil\u{1b}]52;c;ZWNobyBwd25lZA==\u{7}",
        "x\u{9b}31m",
        "x\u{7f}",
        "two\nlines",
        "tab\there",
        "nul\u{0}",
    ];
    for name in hostile {
        let calls = [
            (
                Method::POST,
                "/v1/apps".to_owned(),
                json!({"name": name, "scopes": ["deploy_tool"]}),
            ),
            (
                Method::PATCH,
                format!("/v1/apps/{app}"),
                json!({"name": name}),
            ),
            (
                Method::POST,
                format!("/v1/apps/{app}/keys"),
                json!({"name": name}),
            ),
        ];
        for (method, path, body) in calls {
            let answer = gw.admin(method.clone(), &path, Some(body)).await;
            assert_eq!(
                (answer.status.as_u16(), answer.error_code().as_str()),
                (422, "invalid_request"),
                "{method} {path} {name:?}"
            );
            let message = answer.json()["error"]["message"]
                .as_str()
                .unwrap_or("")
                .to_owned();
            assert!(message.contains("name"), "{message}");
        }
    }
    // Nothing was stored under such a name; printable Unicode is still fine.
    let apps = gw.admin(Method::GET, "/v1/apps", None).await.json();
    assert_eq!(apps.as_array().map(Vec::len), Some(1), "{apps}");
    gw.create_app("Ünïcødé ✓ 名前", &["deploy_tool"]).await;
}
