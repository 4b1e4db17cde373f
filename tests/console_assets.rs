//! The console's static files over real sockets: served without a token, with the security
//! headers and the right content types; the API behind them still needs the token, and
//! `GET /v1/whoami` names the caller and its role.

mod common;

use common::gateway::{config_yaml, TestGateway, Upstreams, ADMIN_TOKEN};
use common::http::{get, send, Answer};
use http::Method;

async fn gateway() -> TestGateway {
    let dir = tempfile::tempdir().expect("dir");
    let yaml = config_yaml(
        &Upstreams {
            tools: "http://127.0.0.1:9".into(),
        },
        None,
        &dir.path().join("data"),
    );
    let marker = "  token_env: SCOPEGATE_TEST_UNUSED_TOKEN\n";
    assert!(yaml.contains(marker));
    let yaml = yaml.replace(
        marker,
        &format!("{marker}  tokens:\n    ci: {{env: CI_TOKEN, role: operator}}\n"),
    );
    TestGateway::start_with_tokens(&yaml, dir, &[("admin", ADMIN_TOKEN), ("ci", "t-ci")]).await
}

fn header<'a>(answer: &'a Answer, name: &str) -> &'a str {
    answer
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test]
async fn the_console_is_served_without_a_token_with_strict_headers() {
    let gw = gateway().await;
    let cases = [
        ("/console/", "text/html; charset=utf-8", "<!doctype html>"),
        (
            "/console/app.js",
            "text/javascript; charset=utf-8",
            "'use strict'",
        ),
        ("/console/style.css", "text/css; charset=utf-8", ":root"),
        ("/console/favicon.svg", "image/svg+xml", "<svg"),
    ];
    for (path, content_type, needle) in cases {
        let answer = get(&format!("http://{}{path}", gw.admin), &[]).await;
        assert_eq!(answer.status, 200, "{path}");
        assert_eq!(header(&answer, "content-type"), content_type, "{path}");
        let body = String::from_utf8_lossy(&answer.body);
        assert!(body.contains(needle), "{path}");
        let csp = header(&answer, "content-security-policy");
        for directive in [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "form-action 'self'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe"), "{csp}");
        assert_eq!(header(&answer, "x-frame-options"), "DENY");
        assert_eq!(header(&answer, "x-content-type-options"), "nosniff");
        assert_eq!(header(&answer, "referrer-policy"), "no-referrer");
        assert_eq!(header(&answer, "cache-control"), "no-store");
    }
    // The page has no inline script or style: everything comes from the two files.
    let page = get(&format!("http://{}/console/", gw.admin), &[]).await;
    let html = String::from_utf8_lossy(&page.body);
    assert!(html.contains(r#"<script src="app.js" defer></script>"#));
    assert_eq!(html.matches("<script").count(), 1);
    assert!(!html.contains("<style") && !html.contains("style=") && !html.contains("onclick"));
    assert!(!html.contains("http://") && !html.contains("https://"));
}

#[tokio::test]
async fn only_console_gets_bypass_the_token() {
    let gw = gateway().await;
    let base = format!("http://{}", gw.admin);
    let redirect = get(&format!("{base}/console"), &[]).await;
    assert_eq!(redirect.status, 301);
    assert_eq!(header(&redirect, "location"), "/console/");
    let missing = get(&format!("{base}/console/secrets.json"), &[]).await;
    assert_eq!(missing.status, 404);
    // A write to the console path is an API call like any other: no token, 401.
    let post = send(Method::POST, &format!("{base}/console/"), &[], "x").await;
    assert_eq!(post.status, 401);
    for path in [
        "/v1/apps",
        "/v1/whoami",
        "/v1/keys",
        "/consoles",
        "/v1/console/",
    ] {
        let answer = get(&format!("{base}{path}"), &[]).await;
        assert_eq!(
            (answer.status.as_u16(), answer.error_code().as_str()),
            (401, "unauthorized"),
            "{path}"
        );
    }
}

#[tokio::test]
async fn whoami_names_the_caller_and_its_role() {
    let gw = gateway().await;
    let me = gw.admin(Method::GET, "/v1/whoami", None).await;
    assert_eq!(me.status, 200);
    assert_eq!(
        me.json(),
        serde_json::json!({"name": "admin", "role": "admin"})
    );
    let ci = gw.admin_as("t-ci", Method::GET, "/v1/whoami", None).await;
    assert_eq!(
        ci.json(),
        serde_json::json!({"name": "ci", "role": "operator"})
    );
    let post = gw.admin(Method::POST, "/v1/whoami", None).await;
    assert_eq!(post.status.as_u16(), 405);
}
