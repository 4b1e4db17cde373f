//! Clients cannot steer an authorised request into another one: headers that upstream
//! frameworks trust for the method, client or URL are dropped unless a trusted proxy sent them,
//! and `;` path parameters (which servlet containers strip before routing) are refused unless
//! the route allows them.

mod common;

use bytes::Bytes;
use common::gateway::TestGateway;
use common::http::{get, send};
use common::upstream::Upstream;
use http::Method;

/// Each header with a value that would turn the POST into something else upstream.
const STEERING: [(&str, &str); 10] = [
    ("x-http-method-override", "DELETE"),
    ("x-http-method", "DELETE"),
    ("x-method-override", "DELETE"),
    ("forwarded", "for=10.0.0.1;host=admin.internal;proto=https"),
    ("x-real-ip", "10.0.0.1"),
    ("true-client-ip", "10.0.0.1"),
    ("x-forwarded-port", "8443"),
    ("x-forwarded-prefix", "/admin"),
    ("x-original-url", "/api/v1/admin/delete-everything"),
    ("x-rewrite-url", "/api/v1/admin/delete-everything"),
];

/// A route where `;` parameters are part of the API.
const MATRIX_ROUTE: &str = "  - method: GET
    path: /api/v1/matrix/{cell}
    scope: public
    upstream: tools
    allow_semicolons: true
";

/// The test config, with `extra` appended (after `routes:`, the last section).
async fn gateway(upstream: &Upstream, extra: &str) -> TestGateway {
    TestGateway::in_front_of(&upstream.url(), |yaml| format!("{yaml}{extra}")).await
}

/// A keyed POST that carries every steering header; the upstream's record of it.
async fn deploy_with_steering_headers(gw: &TestGateway, upstream: &Upstream) -> http::HeaderMap {
    let key = gw.key_with(&["deploy_tool"]).await;
    let mut headers = vec![("x-api-key", key.as_str())];
    headers.extend(STEERING);
    let answer = send(
        Method::POST,
        &gw.url("/api/v1/tools/web-search/deploy"),
        &headers,
        Bytes::from_static(b"{}"),
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let seen = upstream.last();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.target, "/api/v1/tools/web-search/deploy");
    seen.headers
}

#[tokio::test]
async fn steering_headers_from_a_client_never_reach_the_upstream() {
    let upstream = Upstream::start().await;
    let gw = gateway(&upstream, "").await;
    let seen = deploy_with_steering_headers(&gw, &upstream).await;
    for (name, _) in STEERING {
        assert!(
            !seen.contains_key(name),
            "{name} reached the upstream: {seen:?}"
        );
    }
    // What the gateway sets itself is still there.
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
}

#[tokio::test]
async fn steering_headers_from_a_trusted_proxy_are_kept() {
    let upstream = Upstream::start().await;
    let gw = gateway(&upstream, "limits:\n  trusted_proxies: [127.0.0.1/32]\n").await;
    let seen = deploy_with_steering_headers(&gw, &upstream).await;
    for (name, value) in STEERING {
        assert_eq!(
            seen.get(name).and_then(|v| v.to_str().ok()),
            Some(value),
            "{name} from a trusted proxy"
        );
    }
}

#[tokio::test]
async fn semicolon_parameters_are_refused_before_anything_is_forwarded() {
    let upstream = Upstream::start().await;
    let gw = gateway(&upstream, "").await;
    let key = gw.key_with(&["view_job_status"]).await;
    // `/api/v1/jobs/{job_id}` matches; an upstream that strips `;x` would serve `/api/v1/jobs/import`.
    for path in [
        "/api/v1/jobs/import;x",
        "/api/v1/jobs/import;",
        "/api/v1/jobs/import;jsessionid=1?q=1",
        "/api/v1/jobs/7;x/stream",
        "/api/v1/jobs/./import;x",
    ] {
        let answer = get(&gw.url(path), &[("x-api-key", &key)]).await;
        assert_eq!(answer.status, 400, "{path}: {:?}", answer.body);
        assert_eq!(answer.error_code(), "bad_request", "{path}");
        // Refused on the path alone: no key needed to learn that.
        let anonymous = get(&gw.url(path), &[]).await;
        assert_eq!(anonymous.status, 400, "{path} without a key");
    }
    assert_eq!(upstream.count(), 0, "{:?}", upstream.requests());

    // An encoded `%3B` is data, not a delimiter, to the upstream too.
    let answer = get(&gw.url("/api/v1/jobs/import%3Bx"), &[("x-api-key", &key)]).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(upstream.last().target, "/api/v1/jobs/import%3Bx");
}

#[tokio::test]
async fn a_route_with_allow_semicolons_forwards_them_intact() {
    let upstream = Upstream::start().await;
    let gw = gateway(&upstream, MATRIX_ROUTE).await;
    let answer = get(&gw.url("/api/v1/matrix/a;v=1;w=2?x=1"), &[]).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(upstream.last().target, "/api/v1/matrix/a;v=1;w=2?x=1");
    // Other routes still refuse them (a path no route matches stays a 404).
    let answer = get(&gw.url("/api/v1/prefixed/a;v=1"), &[]).await;
    assert_eq!(answer.status, 400, "{:?}", answer.body);
    assert_eq!(upstream.count(), 1);
}

/// `X-Forwarded-For` entries from a trusted proxy that are not plain addresses.
const NOT_ADDRESSES: [&str; 7] = [
    "203.0.113.9:4711",
    "[2001:db8::9]",
    "[2001:db8::9]:4711",
    "unknown",
    "not-an-ip",
    "203.0.113.9, ",
    "127.0.0.5, garbage",
];

/// A POST to the deploy route with `key` and this `X-Forwarded-For`: (status, error code).
async fn deploy_via_proxy(gw: &TestGateway, key: &str, xff: &str) -> (u16, String) {
    let answer = send(
        Method::POST,
        &gw.url("/api/v1/tools/web-search/deploy"),
        &[("x-api-key", key), ("x-forwarded-for", xff)],
        Bytes::from_static(b"{}"),
    )
    .await;
    (answer.status.as_u16(), answer.error_code())
}

#[tokio::test]
async fn an_entry_that_is_not_an_address_leaves_the_client_unknown() {
    let upstream = Upstream::start().await;
    let gw = gateway(&upstream, "limits:\n  trusted_proxies: [127.0.0.1/32]\n").await;
    let app = gw.create_app("behind-lb", &["deploy_tool"]).await;
    // Limited to the proxy's own network: the proxy's address must never stand in for the
    // client's.
    let restricted = gw
        .admin(
            Method::POST,
            &format!("/v1/apps/{app}/keys"),
            Some(serde_json::json!({"name": "lb-only", "allowed_ips": ["127.0.0.0/8"]})),
        )
        .await
        .json()["key"]
        .as_str()
        .expect("key")
        .to_owned();
    let (_, open) = gw.create_key(&app, None).await;

    assert_eq!(deploy_via_proxy(&gw, &restricted, "127.0.0.5").await.0, 200);
    for xff in NOT_ADDRESSES {
        assert_eq!(
            deploy_via_proxy(&gw, &restricted, xff).await,
            (403, "ip_not_allowed".to_owned()),
            "X-Forwarded-For: {xff}"
        );
        // A key without allowed_ips does not care who the client is.
        let before = upstream.count();
        assert_eq!(deploy_via_proxy(&gw, &open, xff).await.0, 200, "{xff}");
        assert_eq!(upstream.count(), before + 1);
        // The upstream is told the client is unknown, never handed the garbage as an address.
        let forwarded = upstream.last().headers["x-forwarded-for"]
            .to_str()
            .expect("ASCII")
            .to_owned();
        let entries: Vec<&str> = forwarded.split(", ").collect();
        assert_eq!(entries.last(), Some(&"127.0.0.1"), "{xff} -> {forwarded}");
        assert!(entries.contains(&"unknown"), "{xff} -> {forwarded}");
        for entry in entries {
            assert!(
                entry == "unknown" || entry.parse::<std::net::IpAddr>().is_ok(),
                "{xff} -> {forwarded}"
            );
        }
    }
}
