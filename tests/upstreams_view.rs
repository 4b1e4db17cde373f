//! `GET /v1/upstreams` and `scopegate upstreams list`: every upstream of the config in force, in
//! config order, with its targets as they stand (address, weight, health verdict, ejection,
//! requests in flight, open connections); any role may read it, no role may write it.
//!
//! The config: the test config's `url:` upstreams (`tools`, `dead`, `prefixed`), `models` with
//! `targets:` of two real upstreams, and `checked`, whose active check fails on its dead target.

mod common;

use common::gateway::{config_yaml, TestGateway, Upstreams, ADMIN_TOKEN};
use common::http::get;
use common::process::ServeProcess;
use common::upstream::Upstream;
use http::Method;
use serde_json::{json, Value};
use std::time::{Duration, Instant, SystemTime};

const OPERATOR: &str = "t-operator";
const VIEWER: &str = "t-viewer";
/// A target with nothing listening: connections are refused at once.
const DEAD: &str = "http://127.0.0.1:1";
/// Long enough for a few health-check rounds (2 s apart) or ejections on a busy machine.
const SETTLES_WITHIN: Duration = Duration::from_secs(20);

/// The two real upstreams behind `models`, and `checked`'s live one.
struct Backends {
    tools: Upstream,
    model_a: Upstream,
    model_b: Upstream,
}

impl Backends {
    async fn start() -> Backends {
        Backends {
            tools: Upstream::start().await,
            model_a: Upstream::start().await,
            model_b: Upstream::start().await,
        }
    }
}

/// The test config plus `models` and `checked` (each with a route), and a token per role.
fn yaml(backends: &Backends, data: &std::path::Path) -> String {
    let upstreams = Upstreams {
        tools: backends.tools.url(),
    };
    let yaml = config_yaml(&upstreams, None, data);
    let extra_upstreams = format!(
        "  models:\n    targets:\n      - url: {a}\n        weight: 2\n      - url: {b}\n    balance: round_robin\n\
         \x20 checked:\n    targets:\n      - url: {a}\n      - url: {DEAD}\n    health:\n      path: /healthz\n      interval: 2s\n      timeout: 1s\n      unhealthy_after: 1\n      healthy_after: 1\n",
        a = backends.model_a.url(),
        b = backends.model_b.url(),
    );
    let extra_routes = "  - method: GET\n    path: /api/v1/models/{model_id}\n    scope: public\n    upstream: models\n\
                        \x20 - method: GET\n    path: /api/v1/checked\n    scope: public\n    upstream: checked\n";
    let tokens = "  tokens:\n    ci: {env: CI_TOKEN, role: operator}\n    viewer: {env: VIEWER_TOKEN, role: read}\n";
    let marker = "  token_env: SCOPEGATE_TEST_UNUSED_TOKEN\n";
    assert!(yaml.contains(marker) && yaml.contains("\nroutes:\n"));
    let yaml = yaml
        .replace(marker, &format!("{marker}{tokens}"))
        .replace("\nroutes:\n", &format!("\n{extra_upstreams}routes:\n"));
    format!("{yaml}{extra_routes}")
}

async fn gateway(backends: &Backends) -> TestGateway {
    let dir = tempfile::tempdir().expect("dir");
    let yaml = yaml(backends, &dir.path().join("data"));
    let tokens = [("admin", ADMIN_TOKEN), ("ci", OPERATOR), ("viewer", VIEWER)];
    TestGateway::start_with_tokens(&yaml, dir, &tokens).await
}

async fn upstreams_as(gw: &TestGateway, token: &str) -> Value {
    let answer = gw.admin_as(token, Method::GET, "/v1/upstreams", None).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(
        answer.headers.get("content-type").map(|v| v.as_bytes()),
        Some(&b"application/json"[..])
    );
    answer.json()
}

fn upstream<'a>(all: &'a Value, name: &str) -> &'a Value {
    all.as_array()
        .expect("an array")
        .iter()
        .find(|u| u["name"] == name)
        .unwrap_or_else(|| panic!("no upstream {name} in {all}"))
}

fn target<'a>(upstream: &'a Value, url: &str) -> &'a Value {
    upstream["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .find(|t| t["url"] == url)
        .unwrap_or_else(|| panic!("no target {url} in {upstream}"))
}

/// `http://127.0.0.1:7001` → `127.0.0.1:7001`.
fn address(url: &str) -> &str {
    url.strip_prefix("http://").expect("an http URL")
}

/// Each upstream's name and target URLs: what does not change while the gateway runs.
fn outline(all: &Value) -> Vec<(String, Vec<String>)> {
    let text = |v: &Value| v.as_str().expect("a string").to_owned();
    all.as_array()
        .expect("an array")
        .iter()
        .map(|u| {
            let targets = u["targets"].as_array().expect("targets");
            (
                text(&u["name"]),
                targets.iter().map(|t| text(&t["url"])).collect(),
            )
        })
        .collect()
}

/// Polls the view until `done` holds for it; the last view otherwise, in the panic.
async fn upstreams_once(gw: &TestGateway, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let now = upstreams_as(gw, ADMIN_TOKEN).await;
        if done(&now) {
            return now;
        }
        assert!(started.elapsed() < SETTLES_WITHIN, "never {what}: {now}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn every_upstream_and_target_is_listed_in_config_order_with_its_state() {
    let backends = Backends::start().await;
    let gw = gateway(&backends).await;
    let all = upstreams_as(&gw, ADMIN_TOKEN).await;
    let names: Vec<&str> = all
        .as_array()
        .expect("an array")
        .iter()
        .map(|u| u["name"].as_str().expect("a name"))
        .collect();
    assert_eq!(names, ["tools", "dead", "prefixed", "models", "checked"]);

    // A `url:` upstream is one target, labelled by its URL, under the default balance.
    let tools = backends.tools.url();
    assert_eq!(
        upstream(&all, "tools"),
        &json!({"name": "tools", "balance": "least_requests", "targets": [
            {"url": tools, "address": address(&tools), "weight": 1, "healthy": true,
             "ejected_until": null, "in_flight": 0, "open_connections": 0}]})
    );
    let prefixed = &upstream(&all, "prefixed")["targets"][0];
    assert_eq!(prefixed["address"], address(&tools), "{prefixed}");

    // `targets:` keep their order and weights; every field has the contract's type.
    let models = upstream(&all, "models");
    assert_eq!(models["balance"], "round_robin");
    let urls: Vec<&str> = models["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .map(|t| t["url"].as_str().expect("url"))
        .collect();
    let (a, b) = (backends.model_a.url(), backends.model_b.url());
    assert_eq!(urls, [a.as_str(), b.as_str()]);
    assert_eq!(target(models, &a)["weight"], 2);
    assert_eq!(target(models, &b)["weight"], 1);
    for t in models["targets"].as_array().expect("targets") {
        let url = t["url"].as_str().expect("url");
        assert_eq!(t["address"], address(url), "{t}");
        assert_eq!(t["healthy"], true, "no health check: healthy");
        assert!(t["ejected_until"].is_null(), "{t}");
        assert!(
            t["in_flight"].is_u64() && t["open_connections"].is_u64(),
            "{t}"
        );
    }

    // After requests, the targets that served them hold (idle) connections: counted as open.
    for i in 0..4 {
        let answer = get(&gw.url(&format!("/api/v1/models/m{i}")), &[]).await;
        assert_eq!(answer.status, 200);
    }
    assert!(backends.model_a.count() > 0 && backends.model_b.count() > 0);
    let all = upstreams_as(&gw, ADMIN_TOKEN).await;
    for t in upstream(&all, "models")["targets"]
        .as_array()
        .expect("targets")
    {
        assert!(t["open_connections"].as_u64() >= Some(1), "{t}");
        assert_eq!(t["in_flight"], 0, "every answer is complete: {t}");
    }

    // The active check takes the dead target out; the live one stays healthy.
    let all = upstreams_once(&gw, "failing its check", |all| {
        target(upstream(all, "checked"), DEAD)["healthy"] == false
    })
    .await;
    let checked = upstream(&all, "checked");
    assert_eq!(target(checked, &a)["healthy"], true, "{checked}");
    assert!(
        target(checked, DEAD)["ejected_until"].is_null(),
        "{checked}"
    );
}

#[tokio::test]
async fn a_target_failing_requests_shows_until_when_it_is_ejected() {
    let backends = Backends::start().await;
    let gw = gateway(&backends).await;
    // Passive ejection is on by default (5 failures in a row): requests to the dead upstream
    // fail until it is ejected.
    let started = Instant::now();
    let dead = loop {
        let answer = get(&gw.url("/api/v1/dead"), &[]).await;
        assert!(answer.status.is_server_error(), "{}", answer.status);
        let all = upstreams_as(&gw, ADMIN_TOKEN).await;
        let dead = target(upstream(&all, "dead"), DEAD).clone();
        if !dead["ejected_until"].is_null() {
            break dead;
        }
        assert!(started.elapsed() < SETTLES_WITHIN, "never ejected: {dead}");
    };
    let until = dead["ejected_until"].as_str().expect("a time");
    assert!(until.ends_with('Z'), "UTC: {until}");
    let until = humantime::parse_rfc3339(until).expect("RFC 3339");
    assert!(until > SystemTime::now() - Duration::from_secs(1), "{dead}");
    // Ejection is passive: the upstream has no active check, whose verdict stays healthy.
    assert_eq!(dead["healthy"], true, "{dead}");
}

#[tokio::test]
async fn any_role_may_read_the_upstreams_and_none_may_write_them() {
    let backends = Backends::start().await;
    let gw = gateway(&backends).await;
    let by_admin = outline(&upstreams_as(&gw, ADMIN_TOKEN).await);
    assert_eq!(by_admin.len(), 5, "{by_admin:?}");
    for token in [OPERATOR, VIEWER] {
        assert_eq!(
            outline(&upstreams_as(&gw, token).await),
            by_admin,
            "{token}"
        );
    }

    let no_token = get(&format!("http://{}/v1/upstreams", gw.admin), &[]).await;
    assert_eq!(no_token.status, 401);
    let read_post = gw
        .admin_as(VIEWER, Method::POST, "/v1/upstreams", Some(json!({})))
        .await;
    assert_eq!(read_post.status, 403, "{:?}", read_post.body);
    assert_eq!(read_post.error_code(), "forbidden");
    let admin_delete = gw.admin(Method::DELETE, "/v1/upstreams", None).await;
    assert_eq!(admin_delete.status, 405, "{:?}", admin_delete.body);
}

#[tokio::test]
async fn the_cli_prints_a_table_of_targets_per_upstream_or_the_json() {
    let backends = Backends::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let yaml = yaml(&backends, &dir.path().join("data"));
    let gw = ServeProcess::start(dir.path(), &yaml).await;

    let run = gw.cli(&["upstreams", "list"]).await;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    let text = &run.stdout;
    assert!(text.lines().all(|l| l.len() <= 100), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    let heading = |name: &str| {
        lines
            .iter()
            .position(|l| l.starts_with(&format!("upstream {name} (balance: ")))
            .unwrap_or_else(|| panic!("no heading for {name}:\n{text}"))
    };
    let models = heading("models");
    assert_eq!(lines[models], "upstream models (balance: round_robin)");
    let header: Vec<&str> = lines[models + 1].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "TARGET",
            "ADDRESS",
            "WEIGHT",
            "HEALTHY",
            "EJECTED_UNTIL",
            "IN_FLIGHT",
            "CONNECTIONS"
        ]
    );
    let a = backends.model_a.url();
    let row: Vec<&str> = lines[models + 2].split_whitespace().collect();
    assert_eq!(
        row[..6],
        [a.as_str(), address(&a), "2", "true", "-", "0"],
        "{text}"
    );
    assert!(
        heading("tools") < heading("dead") && heading("prefixed") < models,
        "{text}"
    );

    let run = gw.cli(&["upstreams", "list", "--json"]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let all: Value = serde_json::from_str(&run.stdout).expect("JSON");
    assert_eq!(upstream(&all, "models")["targets"][0]["url"], a);
    assert_eq!(all.as_array().map(Vec::len), Some(5));
}
