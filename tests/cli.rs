//! The management CLI against the real binary: errors that say why, trimmed scopes, rate-limit
//! overrides, `keys show`, `scopes list`, "not found" naming what, `--token-file`, tables that
//! fit 100 columns, and `scopegate health`.

mod common;

use common::gateway::{config_yaml, Upstreams, ADMIN_TOKEN};
use common::process::{scopegate, Run, ServeProcess};
use common::upstream::Upstream;
use serde_json::Value;

async fn serve(dir: &std::path::Path) -> ServeProcess {
    let upstream = Upstream::start().await;
    let yaml = config_yaml(
        &Upstreams {
            tools: upstream.url(),
        },
        None,
        &dir.join("data"),
    );
    ServeProcess::start(dir, &yaml).await
}

fn ok(run: &Run) -> &str {
    assert_eq!(
        run.code,
        Some(0),
        "stdout: {}\nstderr: {}",
        run.stdout,
        run.stderr
    );
    &run.stdout
}

fn json(run: &Run) -> Value {
    serde_json::from_str(ok(run)).unwrap_or_else(|e| panic!("not JSON ({e}): {}", run.stdout))
}

fn refused(run: &Run, says: &str) {
    assert_eq!(run.code, Some(1), "stdout: {}", run.stdout);
    assert!(run.stderr.contains(says), "{:?} lacks {says:?}", run.stderr);
}

#[tokio::test]
async fn management_commands_explain_themselves_and_fit_the_terminal() {
    let dir = tempfile::tempdir().expect("dir");
    let gw = serve(dir.path()).await;

    refused(
        &gw.cli(&["apps", "create", "--name", "x"]).await,
        "an app needs at least one scope",
    );
    let long_name = "an-app-with-a-rather-long-name-that-would-not-fit";
    let app = json(
        &gw.cli(&[
            "apps",
            "create",
            "--name",
            long_name,
            "--scopes",
            "view_job_status, deploy_tool",
            "--json",
        ])
        .await,
    );
    assert_eq!(
        app["scopes"],
        serde_json::json!(["view_job_status", "deploy_tool"])
    );
    let id = app["id"].as_str().expect("id").to_owned();

    refused(&gw.cli(&["apps", "update", &id]).await, "nothing to change");
    refused(
        &gw.cli(&["apps", "update", &id, "--rate-limit", "fast"])
            .await,
        "PER_SECOND/BURST",
    );
    let limited = json(
        &gw.cli(&["apps", "update", &id, "--rate-limit", "5/10", "--json"])
            .await,
    );
    assert_eq!(
        limited["rate_limit"],
        serde_json::json!({"per_second": 5, "burst": 10})
    );
    let default = json(
        &gw.cli(&["apps", "update", &id, "--default-rate-limit", "--json"])
            .await,
    );
    assert!(default["rate_limit"].is_null(), "{default}");
    refused(
        &gw.cli(&["apps", "update", "nosuchapp123", "--name", "y"])
            .await,
        "app \"nosuchapp123\" not found",
    );

    let key = json(
        &gw.cli(&["keys", "create", "--app", &id, "--name", "k", "--json"])
            .await,
    );
    let key_id = key["id"].as_str().expect("key id");
    let full = key["key"].as_str().expect("key");
    let shown = gw.cli(&["keys", "show", key_id]).await;
    assert!(
        ok(&shown).contains("id:") && shown.stdout.contains(key_id),
        "{}",
        shown.stdout
    );
    assert!(
        !shown.stdout.contains(full),
        "the full key is shown once only"
    );
    refused(
        &gw.cli(&["keys", "show", "nosuchkey123"]).await,
        "key \"nosuchkey123\" not found",
    );

    let scopes = gw.cli(&["scopes", "list"]).await;
    assert!(ok(&scopes).contains("deploy_tool") && scopes.stdout.contains("Deploy a tool"));

    for table in [
        gw.cli(&["apps", "list"]).await,
        gw.cli(&["keys", "list"]).await,
    ] {
        for line in ok(&table).lines() {
            assert!(line.len() <= 100, "{} columns: {line}", line.len());
        }
    }
    let narrow = gw.cli(&["apps", "list"]).await;
    assert!(ok(&narrow).contains("CREATED_BY") && narrow.stdout.contains(" admin"));
    assert!(
        !narrow.stdout.contains(long_name),
        "a long name is cut:\n{}",
        narrow.stdout
    );
    let wide = gw.cli(&["apps", "list", "--wide"]).await;
    assert!(ok(&wide).contains(long_name), "{}", wide.stdout);

    // The token from a file, with no environment variable to fall back on.
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{ADMIN_TOKEN}\n")).expect("write token");
    let url = format!("http://{}", gw.admin);
    let run = scopegate(&[
        "scopes",
        "list",
        "--admin-url",
        &url,
        "--token-file",
        token_file.to_str().expect("path"),
    ])
    .await;
    ok(&run);
    std::fs::write(&token_file, "wrong\n").expect("write token");
    let run = scopegate(&[
        "scopes",
        "list",
        "--admin-url",
        &url,
        "--token-file",
        token_file.to_str().expect("path"),
    ])
    .await;
    refused(&run, "401");
}

#[tokio::test]
async fn health_exits_0_only_while_the_gateway_is_ready() {
    let dir = tempfile::tempdir().expect("dir");
    let mut gw = serve(dir.path()).await;
    let config = gw.config();
    let config = config.to_str().expect("path");
    assert_eq!(
        ok(&scopegate(&["health", "-c", config]).await).trim(),
        "ready"
    );
    gw.stop().await;
    let down = scopegate(&["health", "-c", config]).await;
    assert_eq!(down.code, Some(1), "{down:?}");
    assert!(down.stderr.contains("/readyz"), "{down:?}");
}

#[tokio::test]
async fn key_lifecycle_audit_and_export_from_the_command_line() {
    let dir = tempfile::tempdir().expect("dir");
    let gw = serve(dir.path()).await;
    let app = json(
        &gw.cli(&[
            "apps",
            "create",
            "--name",
            "cli-life",
            "--scopes",
            "deploy_tool",
            "--json",
        ])
        .await,
    );
    let app_id = app["id"].as_str().expect("id").to_owned();
    let created = json(
        &gw.cli(&[
            "keys",
            "create",
            "--app",
            &app_id,
            "--name",
            "ci",
            "--allowed-ips",
            "127.0.0.1, ::1",
            "--expires-in-days",
            "30",
            "--json",
        ])
        .await,
    );
    let key_id = created["id"].as_str().expect("id").to_owned();
    assert_eq!(
        created["allowed_ips"],
        serde_json::json!(["127.0.0.1", "::1"])
    );

    let disabled = json(&gw.cli(&["keys", "disable", &key_id, "--json"]).await);
    assert_eq!(disabled["status"], "disabled");
    let enabled = json(&gw.cli(&["keys", "enable", &key_id, "--json"]).await);
    assert_eq!(enabled["status"], "active");
    let rolled = gw.cli(&["keys", "roll", &key_id, "--grace", "0s"]).await;
    let printed = ok(&rolled);
    assert!(
        printed.contains("sg_"),
        "the new key is printed once: {printed}"
    );
    let revoked = json(
        &gw.cli(&["keys", "list", "--status", "revoked", "--json"])
            .await,
    );
    assert!(revoked
        .as_array()
        .expect("array")
        .iter()
        .any(|k| k["id"] == key_id.as_str()));

    let audit = json(&gw.cli(&["audit", "--app", &app_id, "--json"]).await);
    let actions: Vec<&str> = audit
        .as_array()
        .expect("array")
        .iter()
        .map(|e| e["action"].as_str().expect("action"))
        .collect();
    assert_eq!(
        actions,
        [
            "key.rolled",
            "key.enabled",
            "key.disabled",
            "key.created",
            "app.created"
        ]
    );
    let export = gw
        .cli(&[
            "usage",
            "export",
            "--from",
            "2026-01-01",
            "--to",
            "2026-01-31",
            "--format",
            "csv",
        ])
        .await;
    assert!(
        ok(&export).starts_with("date,app_id,key_id,requests"),
        "{}",
        export.stdout
    );
}

/// Names written straight into the store, past the admin API's validation, as older data may
/// hold them: an OSC 52 clipboard write, a C1 CSI, a screen clear, a bell.
const APP_NAME: &str = "x\u{9b}31m\u{1b}]52;c;cHduZWQ=\u{7}";
const KEY_NAME: &str = "k\u{1b}[2J\u{7f}\nz";

#[tokio::test]
async fn control_characters_in_older_records_are_printed_escaped() {
    let redis = common::redis::RedisServer::start();
    let dir = tempfile::tempdir().expect("dir");
    let upstream = Upstream::start().await;
    let yaml = config_yaml(
        &Upstreams {
            tools: upstream.url(),
        },
        Some(&redis.url()),
        &dir.path().join("data"),
    );
    let gw = ServeProcess::start(dir.path(), &yaml).await;
    let app = json(
        &gw.cli(&[
            "apps",
            "create",
            "--name",
            "plain",
            "--scopes",
            "deploy_tool",
            "--json",
        ])
        .await,
    );
    let app_id = app["id"].as_str().expect("id").to_owned();
    let key = json(
        &gw.cli(&["keys", "create", "--app", &app_id, "--name", "k", "--json"])
            .await,
    );
    let key_id = key["id"].as_str().expect("id").to_owned();

    let client = redis::Client::open(redis.url()).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    for (record, name) in [
        (format!("sg:app:{app_id}"), APP_NAME),
        (format!("sg:key:{key_id}"), KEY_NAME),
    ] {
        let stored: String = redis::cmd("GET")
            .arg(&record)
            .query_async(&mut conn)
            .await
            .expect("stored record");
        let mut value: Value = serde_json::from_str(&stored).expect("JSON record");
        value["name"] = name.into();
        let _: () = redis::cmd("SET")
            .arg(&record)
            .arg(value.to_string())
            .query_async(&mut conn)
            .await
            .expect("rewrite record");
    }

    for args in [
        vec!["apps", "list"],
        vec!["apps", "list", "--wide"],
        vec!["apps", "list", "--json"],
        vec!["keys", "list", "--app", app_id.as_str()],
        vec!["keys", "list", "--app", app_id.as_str(), "--wide"],
        vec!["keys", "show", key_id.as_str()],
        vec!["keys", "show", key_id.as_str(), "--json"],
    ] {
        let out = ok(&gw.cli(&args).await).to_owned();
        for raw in ['\u{1b}', '\u{9b}', '\u{7}', '\u{7f}'] {
            assert!(!out.contains(raw), "{args:?} printed {raw:?} raw:\n{out:?}");
        }
        assert!(
            out.contains(r"\x1b") || out.contains(r"\u001b"),
            "{args:?} shows the escape escaped:\n{out}"
        );
    }
    let wide = ok(&gw.cli(&["apps", "list", "--wide"]).await).to_owned();
    assert!(wide.contains(r"x\u{9b}31m\x1b]52;c;cHduZWQ=\x07"), "{wide}");
    let shown = ok(&gw.cli(&["keys", "show", &key_id]).await).to_owned();
    assert!(shown.contains(r"k\x1b[2J\x7f\nz"), "{shown}");
    // One record per line: the newline in the name did not start a new one.
    assert!(shown.lines().all(|l| l.contains(": ")), "{shown}");
}
