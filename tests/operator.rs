//! What an operator sees of the real binary after mixed traffic: JSON log lines (access lines
//! with their fields, a reason for each 5xx, never a key or an admin token), a scrape that
//! `promtool check metrics` accepts, and a dashboard that names only metrics the gateway exports.

mod common;

use common::gateway::{config_yaml, Upstreams, ADMIN_TOKEN};
use common::http::{get, send, Answer};
use common::models::{FakeModel, OPENAI_PATH};
use common::process::ServeProcess;
use common::upstream::Upstream;
use http::Method;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::Path;

/// The proxied requests [`mixed_traffic`] sends (11 in its table, 2 with a rate-limited key).
const PROXIED: usize = 13;

/// One request of [`mixed_traffic`]: method, path, headers, expected status.
type Step<'a> = (Method, &'a str, Vec<(&'a str, &'a str)>, u16);

/// What [`mixed_traffic`] issued: every secret that must never show up in output.
struct Issued {
    key_id: String,
    secrets: Vec<String>,
}

async fn serve(dir: &Path, upstream: &Upstream, extra: &str) -> ServeProcess {
    let yaml = config_yaml(
        &Upstreams {
            tools: upstream.url(),
        },
        None,
        &dir.join("data"),
    );
    ServeProcess::start(dir, &format!("{yaml}{extra}")).await
}

async fn admin(gw: &ServeProcess, method: Method, path: &str, body: Value) -> Answer {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let url = format!("http://{}{}", gw.admin, path);
    let headers = [("authorization", auth.as_str())];
    send(method, &url, &headers, body.to_string()).await
}

/// Every outcome an operator meets on a normal day: allowed (both credential headers), missing,
/// wrong and out-of-scope keys, 404, 405, a dead upstream (502), a query string carrying a
/// secret, and admin calls with a wrong token.
async fn mixed_traffic(gw: &ServeProcess) -> Issued {
    let app = admin(
        gw,
        Method::POST,
        "/v1/apps",
        json!({"name": "ops", "scopes": ["view_job_status"]}),
    )
    .await;
    assert_eq!(app.status, 201, "{:?}", app.body);
    let app_id = app.json()["id"].as_str().expect("id").to_owned();
    let key = admin(
        gw,
        Method::POST,
        &format!("/v1/apps/{app_id}/keys"),
        json!({"name": "k"}),
    )
    .await;
    assert_eq!(key.status, 201, "{:?}", key.body);
    let full = key.json()["key"].as_str().expect("key").to_owned();
    let key_id = key.json()["id"].as_str().expect("id").to_owned();
    let secret = full.rsplit('_').next().expect("secret").to_owned();
    let bearer = format!("Bearer {full}");
    let wrong = format!("sg_{key_id}_{}", "A".repeat(32));

    let steps: [Step<'_>; PROXIED - 2] = [
        (
            Method::GET,
            "/api/v1/jobs/1",
            vec![("x-api-key", &full)],
            200,
        ),
        (
            Method::GET,
            "/api/v1/jobs/2?token=qs-secret",
            vec![("authorization", &bearer)],
            200,
        ),
        (Method::GET, "/api/v1/jobs/3", vec![], 401),
        (
            Method::GET,
            "/api/v1/jobs/4",
            vec![("x-api-key", &wrong)],
            401,
        ),
        (
            Method::POST,
            "/api/v1/tools/t/deploy",
            vec![("x-api-key", &full)],
            403,
        ),
        (Method::GET, "/nowhere", vec![], 404),
        (
            Method::DELETE,
            "/api/v1/jobs/5",
            vec![("x-api-key", &full)],
            405,
        ),
        (Method::GET, "/api/v1/dead", vec![], 502),
        (Method::GET, "/api/v1/health", vec![], 200),
        (
            Method::HEAD,
            "/api/v1/jobs/6",
            vec![("x-api-key", &full)],
            200,
        ),
        (Method::PUT, "/api/v1/prefixed/x", vec![], 200),
    ];
    for (method, path, headers, want) in steps {
        let answer = send(method.clone(), &gw.url(path), &headers, "").await;
        assert_eq!(answer.status, want, "{method} {path}: {:?}", answer.body);
    }
    // A second app limited to one request: its second one is 429 rate_limited.
    let slow = admin(
        gw,
        Method::POST,
        "/v1/apps",
        json!({"name": "slow", "scopes": ["view_job_status"],
               "rate_limit": {"per_second": 1, "burst": 1}}),
    )
    .await;
    let slow_id = slow.json()["id"].as_str().expect("id").to_owned();
    let slow_key = admin(
        gw,
        Method::POST,
        &format!("/v1/apps/{slow_id}/keys"),
        json!({"name": "k"}),
    )
    .await;
    let slow_key = slow_key.json()["key"].as_str().expect("key").to_owned();
    for (path, want) in [("/api/v1/jobs/8", 200), ("/api/v1/jobs/9", 429)] {
        let answer = get(&gw.url(path), &[("x-api-key", &slow_key)]).await;
        assert_eq!(answer.status, want, "{path}: {:?}", answer.body);
    }
    let refused = send(
        Method::GET,
        &format!("http://{}/v1/apps", gw.admin),
        &[("authorization", "Bearer not-the-token")],
        "",
    )
    .await;
    assert_eq!(refused.status, 401);
    Issued {
        key_id,
        secrets: vec![
            full,
            secret,
            slow_key,
            ADMIN_TOKEN.to_owned(),
            "qs-secret".to_owned(),
        ],
    }
}

#[tokio::test]
async fn json_logs_parse_name_each_request_and_never_hold_a_secret() {
    let dir = tempfile::tempdir().expect("dir");
    let upstream = Upstream::start().await;
    let mut gw = serve(
        dir.path(),
        &upstream,
        "log:\n  format: json\n  access: true\n",
    )
    .await;
    let issued = mixed_traffic(&gw).await;
    gw.stop().await;
    let output = gw.output();

    let lines: Vec<Value> = output
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for secret in &issued.secrets {
        assert!(
            !output.contains(secret.as_str()),
            "{secret:?} leaked:\n{output}"
        );
    }

    let start = lines
        .iter()
        .find(|l| l["message"] == "scopegate listening")
        .unwrap_or_else(|| panic!("no start-up line:\n{output}"));
    let config = gw.config().display().to_string();
    assert_eq!(start["config"], config.as_str());
    assert!(start["store"]
        .as_str()
        .is_some_and(|s| s.starts_with("store.path = ")));
    assert_eq!(start["proxy"], gw.proxy.to_string().as_str());
    assert_eq!(start["admin"], gw.admin.to_string().as_str());
    assert_eq!(start["metrics"], gw.metrics.to_string().as_str());

    let access: Vec<&Value> = lines
        .iter()
        .filter(|l| l["target"] == "scopegate::access")
        .collect();
    assert_eq!(
        access.len(),
        PROXIED,
        "one line per proxied request:\n{output}"
    );
    for line in &access {
        for field in [
            "timestamp",
            "method",
            "route",
            "path",
            "status",
            "client",
            "duration_ms",
        ] {
            assert!(!line[field].is_null(), "{field} missing in {line}");
        }
        assert!(
            !line["path"].as_str().unwrap_or("?").contains('?'),
            "{line}"
        );
    }
    let find = |path: &str| -> &Value {
        access
            .iter()
            .find(|l| l["path"] == path)
            .unwrap_or_else(|| panic!("no access line for {path}:\n{output}"))
    };
    let ok = find("/api/v1/jobs/1");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["route"], "/api/v1/jobs/{job_id}");
    assert_eq!(ok["key"], issued.key_id.as_str());
    assert!(ok["app"].is_string());
    assert_eq!(ok["upstream"], "tools");
    assert_eq!(ok["upstream_status"], 200);
    assert!(ok["bytes"].as_u64().is_some_and(|b| b > 0), "{ok}");
    assert_eq!(find("/api/v1/jobs/2")["status"], 200);
    assert_eq!(find("/api/v1/jobs/3")["status"], 401);
    assert!(find("/api/v1/jobs/3")["key"].is_null());
    assert_eq!(find("/nowhere")["route"], "unmatched");
    assert_eq!(find("/api/v1/jobs/5")["route"], "/api/v1/jobs/{job_id}");
    assert_eq!(find("/api/v1/dead")["status"], 502);

    let login = lines
        .iter()
        .find(|l| l["message"] == "admin login failed: missing or unknown token")
        .unwrap_or_else(|| panic!("no failed-login line:\n{output}"));
    assert_eq!(login["level"], "WARN");
    assert!(login["client"]
        .as_str()
        .is_some_and(|c| c.starts_with("127.0.0.1:")));

    let failure = lines
        .iter()
        .find(|l| l["message"] == "request failed with a server error")
        .unwrap_or_else(|| panic!("no 5xx line:\n{output}"));
    assert_eq!(failure["route"], "/api/v1/dead");
    assert_eq!(failure["upstream"], "http://127.0.0.1:1");
    assert_eq!(failure["status"], 502);
    assert!(failure["cause"].is_string(), "{failure}");
}

#[tokio::test]
async fn access_lines_can_be_turned_off() {
    let dir = tempfile::tempdir().expect("dir");
    let upstream = Upstream::start().await;
    let mut gw = serve(dir.path(), &upstream, "log:\n  access: false\n").await;
    let answer = get(&gw.url("/api/v1/health"), &[]).await;
    assert_eq!(answer.status, 200);
    gw.stop().await;
    let output = gw.output();
    assert!(output.contains("scopegate listening"), "{output}");
    assert!(!output.contains("scopegate::access"), "{output}");
}

/// The scrape after mixed traffic, and the names of the metric families in it.
/// A public route with `meter: openai`, to the upstream `models` (a fake OpenAI).
const METERED_ROUTE: &str = "  - method: POST
    path: /v1/chat/completions
    scope: public
    upstream: models
    meter: openai
";

async fn scrape_after_traffic(dir: &Path) -> (String, BTreeSet<String>) {
    let upstream = Upstream::start().await;
    let model = FakeModel::start().await;
    // The test config, with the fake model as upstream `models` and the metered route last.
    let yaml = config_yaml(
        &Upstreams {
            tools: upstream.url(),
        },
        None,
        &dir.join("data"),
    )
    .replacen(
        "\nupstreams:\n",
        &format!("\nupstreams:\n  models:\n    url: {}\n", model.url()),
        1,
    );
    let mut gw = ServeProcess::start(dir, &format!("{yaml}{METERED_ROUTE}")).await;
    mixed_traffic(&gw).await;
    // 12 input tokens (the fake reads them from `metadata`), 30 output (`max_tokens`).
    let metered = send(
        Method::POST,
        &gw.url(OPENAI_PATH),
        &[("content-type", "application/json")],
        r#"{"model":"m","messages":[],"max_tokens":30,"metadata":{"input_tokens":12}}"#,
    )
    .await;
    assert_eq!(metered.status, 200, "{:?}", metered.body);
    let scrape = get(&format!("http://{}/metrics", gw.metrics), &[]).await;
    gw.stop().await;
    assert_eq!(scrape.status, 200);
    let text = String::from_utf8(scrape.body.to_vec()).expect("UTF-8");
    let names = common::prom::parse(&text)
        .into_iter()
        .map(|s| s.name)
        .collect();
    (text, names)
}

#[tokio::test]
async fn every_series_has_help_and_a_405_names_its_route() {
    let dir = tempfile::tempdir().expect("dir");
    let (text, _) = scrape_after_traffic(dir.path()).await;
    let typed: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(typed.len() >= 10, "{text}");
    for family in typed {
        assert!(
            text.contains(&format!("# HELP {family} ")),
            "no HELP for {family}:\n{text}"
        );
    }
    for series in [
        r#"scopegate_build_info{version=""#,
        r#"scopegate_requests_total{route="/api/v1/jobs/{job_id}",method="DELETE",status="405""#,
        r#"scopegate_auth_failures_total{reason="expired_key"} 0"#,
        // The one metered answer: 12 input and 30 output tokens, its usage complete.
        r#"scopegate_tokens_total{route="/v1/chat/completions",app="none",direction="input"} 12"#,
        r#"scopegate_tokens_total{route="/v1/chat/completions",app="none",direction="output"} 30"#,
        r#"scopegate_token_usage_missing_total{route="/v1/chat/completions"} 0"#,
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
    ] {
        assert!(text.contains(series), "no {series}:\n{text}");
    }
}

#[tokio::test]
async fn promtool_accepts_the_scrape() {
    let Some(promtool) = promtool() else { return };
    let dir = tempfile::tempdir().expect("dir");
    let (text, _) = scrape_after_traffic(dir.path()).await;
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run promtool");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool output");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics:\n{}{}\nscrape:\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn the_dashboard_names_only_exported_metrics() {
    let dir = tempfile::tempdir().expect("dir");
    let (_, names) = scrape_after_traffic(dir.path()).await;
    let exported = families(&names);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/scopegate.json");
    let dashboard = std::fs::read_to_string(&path).expect("read the dashboard");
    let dashboard: Value = serde_json::from_str(&dashboard).expect("dashboard JSON");
    let mut queries = Vec::new();
    collect_exprs(&dashboard, &mut queries);
    assert!(queries.len() >= 6, "few queries: {queries:?}");
    for query in &queries {
        let named = metric_names(query);
        assert!(!named.is_empty(), "a query naming no metric: {query}");
        for name in named {
            assert!(
                exported.contains(&name),
                "{name} (in {query}) is not exported; exported: {exported:?}"
            );
        }
    }
}

/// promtool from PATH; in CI (`CI` set) its absence is a failure, elsewhere the test is skipped.
fn promtool() -> Option<&'static str> {
    let found = std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(std::env::var_os("CI").is_none(), "CI must install promtool");
        eprintln!("promtool not installed: skipped");
        return None;
    }
    Some("promtool")
}

/// Family names: samples of histograms (`_bucket`, `_sum`, `_count`) folded into their family,
/// and the sample names themselves (a query may name either).
fn families(samples: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = samples.clone();
    for name in samples {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(family) = name.strip_suffix(suffix) {
                out.insert(family.to_owned());
            }
        }
    }
    out
}

/// Every `"expr"` string in a Grafana dashboard.
fn collect_exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// The metric names a PromQL query mentions: identifiers starting `scopegate_` or `process_`
/// (every other identifier in our queries is a function, label or keyword).
fn metric_names(query: &str) -> Vec<String> {
    query
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.starts_with("scopegate_") || w.starts_with("process_"))
        .map(str::to_owned)
        .collect()
}
