//! The proxy end to end: a real upstream, a real gateway, real sockets.

mod common;

use bytes::Bytes;
use common::gateway::TestGateway;
use common::http::{get, send};
use common::upstream::Upstream;
use http::Method;
use scopegate::store::prelude::*;

async fn setup() -> (Upstream, TestGateway) {
    let upstream = Upstream::start().await;
    let gateway = TestGateway::in_front_of(&upstream.url(), |yaml| yaml).await;
    (upstream, gateway)
}

#[tokio::test]
async fn allowed_call_reaches_upstream_with_path_query_body_and_headers_but_no_key() {
    let (upstream, gw) = setup().await;
    let key = gw.key_with(&["deploy_tool"]).await;
    let answer = send(
        Method::POST,
        &gw.url("/api/v1/tools/web-search/deploy?env=staging&x=%20y"),
        &[
            ("x-api-key", &key),
            ("content-type", "application/json"),
            ("x-scopegate-app", "forged-app"),
            ("x-forwarded-for", "6.6.6.6"),
            ("connection", "x-drop-me"),
            ("x-drop-me", "1"),
            ("x-keep-me", "2"),
        ],
        Bytes::from_static(b"{\"version\":3}"),
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.headers["x-upstream"], "recorder");
    assert!(
        !answer.headers.contains_key("connection"),
        "hop-by-hop removed from the response"
    );
    let seen = upstream.last();
    assert_eq!(seen.method, "POST");
    assert_eq!(
        seen.target,
        "/api/v1/tools/web-search/deploy?env=staging&x=%20y"
    );
    assert_eq!(&seen.body[..], b"{\"version\":3}");
    assert_eq!(seen.headers["content-type"], "application/json");
    assert_eq!(seen.headers["x-keep-me"], "2");
    assert!(!seen.headers.contains_key("x-drop-me"));
    assert!(!seen.headers.contains_key("x-api-key"));
    assert!(!seen.headers.contains_key("authorization"));
    let key_id = key.split('_').nth(1).expect("key id");
    assert_eq!(seen.headers["x-scopegate-key"], key_id);
    assert_ne!(seen.headers["x-scopegate-app"], "forged-app");
    assert_eq!(seen.headers.get_all("x-scopegate-app").iter().count(), 1);
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-forwarded-host"], gw.proxy.to_string());
    assert_eq!(seen.headers["host"], upstream.addr.to_string());
    for (name, value) in seen.headers.iter() {
        assert!(
            !value
                .as_bytes()
                .windows(key.len())
                .any(|w| w == key.as_bytes()),
            "key leaked in {name}"
        );
    }
}

#[tokio::test]
async fn bearer_credential_works_and_is_stripped() {
    let (upstream, gw) = setup().await;
    let key = gw.key_with(&["view_job_status"]).await;
    let auth = format!("bearer {key}");
    let answer = get(&gw.url("/api/v1/jobs/42"), &[("authorization", &auth)]).await;
    assert_eq!(answer.status, 200);
    assert!(!upstream.last().headers.contains_key("authorization"));
}

#[tokio::test]
async fn path_is_normalised_once_and_forwarded_as_matched() {
    let (upstream, gw) = setup().await;
    let key = gw.key_with(&["view_job_status"]).await;
    let answer = get(
        &gw.url("/api/v1//tools/../jobs/./%6a1?q=%2F"),
        &[("x-api-key", &key)],
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(upstream.last().target, "/api/v1/jobs/j1?q=%2F");
    // A climb past a scoped route onto another is judged on where it lands.
    let answer = send(
        Method::POST,
        &gw.url("/api/v1/jobs/x/%2e%2e/%2e%2e/models/m/deploy"),
        &[("x-api-key", &key)],
        Bytes::new(),
    )
    .await;
    assert_eq!(
        (answer.status.as_u16(), answer.error_code().as_str()),
        (403, "scope_denied")
    );
    for bad in [
        "/api/v1/jobs/a%2Fb",
        "/api/v1/jobs/a%5cb",
        "/api/v1/jobs/a%00",
        "/../api/v1/health",
    ] {
        let answer = get(&gw.url(bad), &[("x-api-key", &key)]).await;
        assert_eq!(
            (answer.status.as_u16(), answer.error_code().as_str()),
            (400, "bad_request"),
            "{bad}"
        );
    }
    assert_eq!(
        upstream.count(),
        1,
        "rejected paths never reach the upstream"
    );
}

#[tokio::test]
async fn upstream_path_prefix_is_prepended() {
    let (upstream, gw) = setup().await;
    let answer = send(
        Method::PUT,
        &gw.url("/api/v1/prefixed/thing?a=1"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(upstream.last().target, "/base/api/v1/prefixed/thing?a=1");
}

#[tokio::test]
async fn upstream_connections_are_kept_and_reused() {
    let (upstream, gw) = setup().await;
    let key = gw.key_with(&["view_job_status"]).await;
    for _ in 0..20 {
        let answer = get(&gw.url("/api/v1/jobs/1"), &[("x-api-key", &key)]).await;
        assert_eq!(answer.status, 200);
    }
    assert_eq!(upstream.count(), 20);
    assert_eq!(
        upstream.connections(),
        1,
        "one kept-alive upstream connection"
    );
    let seen = upstream.last();
    assert_eq!(
        seen.headers["host"],
        upstream.addr.to_string(),
        "the upstream is addressed by its own authority"
    );
}

/// An upstream that answers one request per connection and then closes it without saying so
/// (as one whose idle timeout just ran out would): a closed pooled connection is never used,
/// so every request is still answered.
#[tokio::test]
async fn an_upstream_closing_its_connections_unannounced_costs_no_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                // Closed after the answer, with no `Connection: close`.
            });
        }
    });
    let gw = TestGateway::in_front_of(&format!("http://{addr}"), |yaml| yaml).await;
    let key = gw.key_with(&["view_job_status"]).await;
    for i in 0..30 {
        let answer = get(&gw.url("/api/v1/jobs/1"), &[("x-api-key", &key)]).await;
        assert_eq!(answer.status, 200, "request {i}: {:?}", answer.body);
        if i % 2 == 0 {
            // Half the time the close has surely arrived; half the time it races the next send.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// Method, path, headers, expected status and error code.
type Case<'a> = (Method, &'a str, Vec<(&'a str, String)>, u16, &'a str);

#[tokio::test]
async fn every_outcome_of_the_contract_table() {
    let (upstream, gw) = setup().await;
    let jobs_key = gw.key_with(&["view_job_status"]).await;
    let (app, _) = (gw.create_app("expiring", &["view_job_status"]).await, ());
    let cases: Vec<Case<'_>> = vec![
        (Method::GET, "/nowhere", vec![], 404, "route_not_found"),
        (
            Method::DELETE,
            "/api/v1/jobs/1",
            vec![],
            405,
            "method_not_allowed",
        ),
        (Method::GET, "/api/v1/jobs/1", vec![], 401, "missing_key"),
        (
            Method::GET,
            "/api/v1/jobs/1",
            vec![("x-api-key", "sg_nosuchkey_abc".into())],
            401,
            "invalid_key",
        ),
        (
            Method::GET,
            "/api/v1/jobs/1",
            vec![("x-api-key", "garbage".into())],
            401,
            "invalid_key",
        ),
        (
            Method::GET,
            "/api/v1/jobs/1",
            vec![("x-api-key", format!("{}x", jobs_key))],
            401,
            "invalid_key",
        ),
        (
            Method::POST,
            "/api/v1/tools/t/deploy",
            vec![("x-api-key", jobs_key.clone())],
            403,
            "scope_denied",
        ),
        (
            Method::GET,
            "/api/v1/jobs/1",
            vec![
                ("x-api-key", jobs_key.clone()),
                ("authorization", "Bearer sg_other_key".into()),
            ],
            400,
            "bad_request",
        ),
        (
            Method::GET,
            "/api/v1/dead",
            vec![],
            502,
            "upstream_unavailable",
        ),
        (
            Method::GET,
            "/api/v1/jobs/1/sleep",
            vec![("x-api-key", jobs_key.clone())],
            504,
            "upstream_timeout",
        ),
    ];
    for (method, path, headers, status, code) in cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let answer = send(method.clone(), &gw.url(path), &headers, Bytes::new()).await;
        assert_eq!(
            answer.status.as_u16(),
            status,
            "{method} {path}: {:?}",
            answer.body
        );
        assert_eq!(answer.error_code(), code, "{method} {path}");
        assert!(answer.json()["error"]["message"].is_string());
        if status == 401 && code == "missing_key" {
            assert_eq!(answer.headers["www-authenticate"], "Bearer");
        }
        if status == 405 {
            assert_eq!(answer.headers["allow"], "GET, HEAD");
        }
        if code == "scope_denied" {
            assert!(answer.json()["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("deploy_tool"));
        }
    }
    // Unknown key and wrong secret look exactly alike.
    let unknown = get(
        &gw.url("/api/v1/jobs/1"),
        &[("x-api-key", "sg_nosuchkey_abc")],
    )
    .await;
    let wrong = get(
        &gw.url("/api/v1/jobs/1"),
        &[("x-api-key", &format!("{jobs_key}x"))],
    )
    .await;
    assert_eq!(unknown.body, wrong.body);

    // Expired: a key whose expiry is in the past (written through the store, as time passing would).
    let (key_id, full) = gw.create_key(&app, Some(1)).await;
    let store = gw.inner.as_ref().expect("running").store.clone();
    let mut record = store.get_key(&key_id).await.expect("store").expect("key");
    store.delete_key(&key_id).await.expect("delete");
    record.expires_at = Some(scopegate::model::now_unix() - 1);
    store.create_key(&record).await.expect("recreate");
    let answer = get(&gw.url("/api/v1/jobs/1"), &[("x-api-key", &full)]).await;
    assert_eq!(
        (answer.status.as_u16(), answer.error_code().as_str()),
        (401, "expired_key")
    );
    let listed = gw
        .admin(Method::GET, &format!("/v1/keys/{key_id}"), None)
        .await;
    assert_eq!(listed.json()["status"], "expired");

    let forwarded = upstream
        .requests()
        .iter()
        .filter(|r| !r.target.ends_with("/sleep"))
        .count();
    assert_eq!(forwarded, 0, "no refused request reached the upstream");
}

#[tokio::test]
async fn deleted_key_and_deleted_app_are_refused_at_once() {
    let (_upstream, gw) = setup().await;
    let app = gw.create_app("short-lived", &["view_job_status"]).await;
    let (key_id, key) = gw.create_key(&app, None).await;
    let (_, other_key) = gw.create_key(&app, None).await;
    assert_eq!(
        get(&gw.url("/api/v1/jobs/1"), &[("x-api-key", &key)])
            .await
            .status,
        200
    );
    assert_eq!(
        gw.admin(Method::DELETE, &format!("/v1/keys/{key_id}"), None)
            .await
            .status,
        204
    );
    let answer = get(&gw.url("/api/v1/jobs/1"), &[("x-api-key", &key)]).await;
    assert_eq!(
        (answer.status.as_u16(), answer.error_code().as_str()),
        (401, "invalid_key")
    );

    assert_eq!(
        get(&gw.url("/api/v1/jobs/1"), &[("x-api-key", &other_key)])
            .await
            .status,
        200
    );
    assert_eq!(
        gw.admin(Method::DELETE, &format!("/v1/apps/{app}"), None)
            .await
            .status,
        204
    );
    let answer = get(&gw.url("/api/v1/jobs/1"), &[("x-api-key", &other_key)]).await;
    assert_eq!(
        (answer.status.as_u16(), answer.error_code().as_str()),
        (401, "invalid_key")
    );
}

#[tokio::test]
async fn scope_edit_applies_at_once() {
    let (_upstream, gw) = setup().await;
    let app = gw.create_app("growing", &["view_job_status"]).await;
    let (_, key) = gw.create_key(&app, None).await;
    let url = gw.url("/api/v1/tools/t/deploy");
    let headers = [("x-api-key", key.as_str())];
    let deploy = || send(Method::POST, &url, &headers, Bytes::new());
    assert_eq!(deploy().await.status, 403);
    let patch = serde_json::json!({"scopes": ["view_job_status", "deploy_tool"]});
    assert_eq!(
        gw.admin(Method::PATCH, &format!("/v1/apps/{app}"), Some(patch))
            .await
            .status,
        200
    );
    assert_eq!(deploy().await.status, 200);
}

#[tokio::test]
async fn public_route_needs_no_key_and_strips_any_given() {
    let (upstream, gw) = setup().await;
    let answer = get(&gw.url("/api/v1/health"), &[("x-api-key", "sg_abc_def")]).await;
    assert_eq!(answer.status, 200);
    assert!(!upstream.last().headers.contains_key("x-api-key"));
    assert!(!upstream.last().headers.contains_key("x-scopegate-app"));
}

#[tokio::test]
async fn streamed_response_arrives_before_the_upstream_finishes() {
    use http_body_util::BodyExt;
    let (upstream, gw) = setup().await;
    let key = gw.key_with(&["view_job_status"]).await;
    let request = http::Request::get(gw.url("/api/v1/jobs/1/stream"))
        .header("x-api-key", &key)
        .body(http_body_util::Full::new(Bytes::new()))
        .expect("request");
    let response = common::http::client()
        .request(request)
        .await
        .expect("response");
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let first = body.frame().await.expect("a frame").expect("ok");
    assert!(first
        .data_ref()
        .expect("data")
        .starts_with(b"data: event 0"));
    assert!(
        !upstream.stream_finished(),
        "the first chunk arrived while the upstream was still writing"
    );
    upstream.release_stream();
    let mut rest = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("ok").into_data() {
            rest.extend_from_slice(&data);
        }
    }
    assert!(upstream.stream_finished());
    assert!(String::from_utf8_lossy(&rest).contains("data: event 4"));
}

#[tokio::test]
async fn body_over_the_route_limit_is_refused_with_413() {
    let (upstream, gw) = setup().await;
    let key = gw.key_with(&["upload_file"]).await;
    let answer = send(
        Method::POST,
        &gw.url("/api/v1/files/small"),
        &[("x-api-key", &key)],
        Bytes::from(vec![b'x'; 4096]),
    )
    .await;
    assert_eq!(
        (answer.status.as_u16(), answer.error_code().as_str()),
        (413, "body_too_large")
    );
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn trace_and_connect_are_refused_with_405() {
    let (_upstream, gw) = setup().await;
    let raw = common::http::raw(
        gw.proxy,
        b"TRACE /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 405"), "{raw}");
    assert!(raw.contains("method_not_allowed"));
    let raw = common::http::raw(
        gw.proxy,
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 405"), "{raw}");
}
