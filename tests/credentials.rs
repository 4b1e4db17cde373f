//! Upstream credentials through the admin API over real sockets, on the embedded store and on
//! a real Redis: create, list with search and pagination, show, replace, delete; validation,
//! roles, audit, the 503 without a master key, apps naming their own credential (and the 409 it
//! causes on delete), the CLI and `rewrap`. The leak tests are in `credential_leaks.rs`.

mod common;

use common::credentials::{
    assert_clean, create, middle, process_yaml, with_master_key, NEW_VALUE, VALUE,
};
use common::gateway::{config_yaml, TestGateway, Upstreams, ADMIN_TOKEN};
use common::process::ServeProcess;
use common::redis::RedisServer;
use http::Method;
use scopegate::credentials::MasterKey;
use serde_json::{json, Value};

const TOKENS: &str = concat!(
    "  tokens:\n",
    "    ci: {env: CI_TOKEN, role: operator}\n",
    "    viewer: {env: VIEWER_TOKEN, role: read}\n",
);
const CI: &str = "t-ci";
const VIEWER: &str = "t-viewer";

/// The test config on `redis` (or the embedded store), with a master key in a file beside it
/// (`master_key` false: a `credentials:` block whose variable is not set).
fn yaml(dir: &std::path::Path, redis: Option<&str>, master_key: bool) -> String {
    let upstreams = Upstreams {
        tools: "http://127.0.0.1:9".into(),
    };
    let marker = "  token_env: SCOPEGATE_TEST_UNUSED_TOKEN\n";
    let yaml = config_yaml(&upstreams, redis, &dir.join("data"))
        .replace(marker, &format!("{marker}{TOKENS}"));
    if master_key {
        with_master_key(yaml, dir)
    } else {
        yaml + "credentials:\n  master_key_env: SCOPEGATE_TEST_UNSET_MASTER_KEY\n"
    }
}

async fn gateway(redis: Option<&RedisServer>, master_key: bool) -> TestGateway {
    let dir = tempfile::tempdir().expect("dir");
    let url = redis.map(RedisServer::url);
    let yaml = yaml(dir.path(), url.as_deref(), master_key);
    let tokens = [("admin", ADMIN_TOKEN), ("ci", CI), ("viewer", VIEWER)];
    TestGateway::start_with_tokens(&yaml, dir, &tokens).await
}

async fn call(gw: &TestGateway, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    call_as(gw, ADMIN_TOKEN, method, path, body).await
}

async fn call_as(
    gw: &TestGateway,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let answer = gw.admin_as(token, method, path, body).await;
    let text = String::from_utf8_lossy(&answer.body).into_owned();
    for secret in [VALUE, NEW_VALUE] {
        assert!(!text.contains(middle(secret)), "{path} answered {text}");
    }
    let json = if answer.body.is_empty() {
        Value::Null
    } else {
        answer.json()
    };
    (answer.status.as_u16(), json)
}

async fn crud_validation_and_audit(gw: &TestGateway) {
    let (status, made) = call(
        gw,
        Method::POST,
        "/v1/credentials",
        Some(create("MY_API", VALUE)),
    )
    .await;
    assert_eq!(status, 201, "{made}");
    assert_eq!(made["name"], "MY_API");
    assert_eq!(made["description"], "MY_API for tests");
    assert_eq!(
        made["masked"],
        format!("sk-{}0Ue", "*".repeat(VALUE.len() - 6))
    );
    assert_eq!(made["created_by"], "admin");
    assert_eq!(made["updated_by"], "admin");
    assert!(made["created_at"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    assert_eq!(made["last_used_at"], Value::Null);
    assert_eq!(made["used_by"], json!({"upstreams": [], "apps": []}));
    assert!(made.get("value").is_none() && made.get("sealed").is_none());

    let (status, again) = call(
        gw,
        Method::POST,
        "/v1/credentials",
        Some(create("MY_API", VALUE)),
    )
    .await;
    assert_eq!(
        (status, again["error"]["code"].as_str()),
        (409, Some("conflict"))
    );

    let long = "v".repeat(8 * 1024 + 1);
    let invalid = [
        (create("", VALUE), "name"),
        (create("my api", VALUE), "name"),
        (create("a.b", VALUE), "name"),
        (create(&"x".repeat(65), VALUE), "name"),
        (create("OK_NAME", ""), "value"),
        (create("OK_NAME", &long), "value"),
        (create("OK_NAME", &format!("{VALUE}\n")), "value"),
        (
            create("OK_NAME", &format!("{VALUE}\r\nX-Injected: 1")),
            "value",
        ),
        (create("OK_NAME", &format!("a\t{VALUE}")), "value"),
        (create("OK_NAME", &format!("{VALUE}\u{1b}")), "value"),
        (json!({"name": "OK_NAME"}), "body"),
        (
            json!({"name": "OK_NAME", "value": VALUE, "extra": 1}),
            "body",
        ),
        (json!({"name": "OK_NAME", "value": [VALUE]}), "body"),
    ];
    for (body, field) in invalid {
        let (status, answer) = call(gw, Method::POST, "/v1/credentials", Some(body.clone())).await;
        assert_eq!(status, 422, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], "invalid_request");
        let message = answer["error"]["message"].as_str().expect("message");
        assert!(message.starts_with(field), "{body}: {message}");
    }
    let (status, _) = call(gw, Method::GET, "/v1/credentials/OK_NAME", None).await;
    assert_eq!(status, 404, "nothing invalid was stored");
    // 8 KiB exactly is accepted.
    let (status, _) = call(
        gw,
        Method::POST,
        "/v1/credentials",
        Some(create("BIG", &"v".repeat(8192))),
    )
    .await;
    assert_eq!(status, 201);

    // List, search and pagination.
    for name in ["tenant-a_openai", "tenant-b_openai", "ZETA"] {
        let (status, _) = call(
            gw,
            Method::POST,
            "/v1/credentials",
            Some(create(name, NEW_VALUE)),
        )
        .await;
        assert_eq!(status, 201);
    }
    let (status, all) = call(gw, Method::GET, "/v1/credentials", None).await;
    assert_eq!(status, 200);
    let names = |list: &Value| -> Vec<String> {
        list.as_array()
            .expect("array")
            .iter()
            .map(|c| c["name"].as_str().expect("name").to_owned())
            .collect()
    };
    let mut sorted = names(&all);
    sorted.sort();
    assert_eq!(
        sorted,
        [
            "BIG",
            "MY_API",
            "ZETA",
            "tenant-a_openai",
            "tenant-b_openai"
        ]
    );
    let (_, found) = call(gw, Method::GET, "/v1/credentials?search=OPENAI", None).await;
    let mut found = names(&found);
    found.sort();
    assert_eq!(found, ["tenant-a_openai", "tenant-b_openai"]);
    let (_, none) = call(gw, Method::GET, "/v1/credentials?search=nothing", None).await;
    assert_eq!(none, json!([]));
    let mut paged = Vec::new();
    let mut next = Some("/v1/credentials?limit=2".to_owned());
    while let Some(path) = next.take() {
        let answer = gw.admin(Method::GET, &path, None).await;
        assert_eq!(answer.status, 200, "{path}");
        let page = answer.json();
        assert!(page.as_array().expect("array").len() <= 2);
        paged.extend(names(&page));
        next = answer
            .headers
            .get("link")
            .and_then(|l| l.to_str().ok())
            .map(|l| l[l.find('<').expect("<") + 1..l.find('>').expect(">")].to_owned());
    }
    assert_eq!(
        paged,
        names(&all),
        "pages list every credential once, in order"
    );

    // Show, replace, delete.
    let (status, shown) = call(gw, Method::GET, "/v1/credentials/MY_API", None).await;
    assert_eq!((status, &shown["masked"]), (200, &made["masked"]));
    let (status, _) = call(gw, Method::GET, "/v1/credentials/NOPE", None).await;
    assert_eq!(status, 404);
    let (status, replaced) = call(
        gw,
        Method::PUT,
        "/v1/credentials/MY_API",
        Some(json!({"value": NEW_VALUE})),
    )
    .await;
    assert_eq!(status, 200, "{replaced}");
    assert!(replaced["masked"]
        .as_str()
        .expect("masked")
        .starts_with("sk-"));
    assert!(replaced["masked"]
        .as_str()
        .expect("masked")
        .ends_with("0Pm"));
    assert_eq!(
        replaced["description"], "MY_API for tests",
        "kept when not given"
    );
    let (status, _) = call(
        gw,
        Method::PUT,
        "/v1/credentials/MY_API",
        Some(json!({"value": "a\nb"})),
    )
    .await;
    assert_eq!(status, 422);
    let (status, _) = call(
        gw,
        Method::PUT,
        "/v1/credentials/NOPE",
        Some(json!({"value": VALUE})),
    )
    .await;
    assert_eq!(status, 404);
    let (status, described) = call(
        gw,
        Method::PUT,
        "/v1/credentials/MY_API",
        Some(json!({"value": VALUE, "description": "rotated"})),
    )
    .await;
    assert_eq!(
        (status, &described["description"]),
        (200, &json!("rotated"))
    );
    let (status, _) = call(gw, Method::DELETE, "/v1/credentials/MY_API", None).await;
    assert_eq!(status, 204);
    let (status, _) = call(gw, Method::GET, "/v1/credentials/MY_API", None).await;
    assert_eq!(status, 404);
    let (status, _) = call(gw, Method::DELETE, "/v1/credentials/MY_API", None).await;
    assert_eq!(status, 404);

    // Audit: every write, by whom, naming the credential, never the value.
    let (_, audit) = call(gw, Method::GET, "/v1/audit", None).await;
    let events: Vec<(String, String)> = audit
        .as_array()
        .expect("array")
        .iter()
        .filter(|e| e["details"]["credential"] == "MY_API")
        .map(|e| {
            (
                e["action"].as_str().expect("action").to_owned(),
                e["actor"].as_str().expect("actor").to_owned(),
            )
        })
        .collect();
    let expected = [
        "credential.deleted",
        "credential.updated",
        "credential.updated",
        "credential.created",
    ];
    assert_eq!(
        events,
        expected.map(|a| (a.to_owned(), "admin".to_owned())),
        "{audit}"
    );
}

#[tokio::test]
async fn crud_validation_and_audit_on_the_embedded_store() {
    let gw = gateway(None, true).await;
    crud_validation_and_audit(&gw).await;
}

#[tokio::test]
async fn crud_validation_and_audit_on_redis() {
    let redis = RedisServer::start();
    let gw = gateway(Some(&redis), true).await;
    crud_validation_and_audit(&gw).await;
}

#[tokio::test]
async fn only_admin_writes_and_every_role_reads() {
    let gw = gateway(None, true).await;
    let (status, _) = call(
        &gw,
        Method::POST,
        "/v1/credentials",
        Some(create("MY_API", VALUE)),
    )
    .await;
    assert_eq!(status, 201);
    for token in [CI, VIEWER] {
        let writes = [
            (
                Method::POST,
                "/v1/credentials",
                Some(create("OTHER", VALUE)),
            ),
            (
                Method::PUT,
                "/v1/credentials/MY_API",
                Some(json!({"value": NEW_VALUE})),
            ),
            (Method::DELETE, "/v1/credentials/MY_API", None),
        ];
        for (method, path, body) in writes {
            let (status, answer) = call_as(&gw, token, method.clone(), path, body).await;
            assert_eq!(
                (status, answer["error"]["code"].as_str()),
                (403, Some("forbidden")),
                "{method} {path}"
            );
        }
        let (status, list) = call_as(&gw, token, Method::GET, "/v1/credentials", None).await;
        assert_eq!((status, list.as_array().map(Vec::len)), (200, Some(1)));
        let (status, one) = call_as(&gw, token, Method::GET, "/v1/credentials/MY_API", None).await;
        assert_eq!((status, &one["name"]), (200, &json!("MY_API")));
    }
    let (_, one) = call(&gw, Method::GET, "/v1/credentials/MY_API", None).await;
    assert_eq!(one["updated_by"], "admin", "no refused write changed it");
}

#[tokio::test]
async fn without_a_master_key_every_credential_call_is_503() {
    let gw = gateway(None, false).await;
    let calls = [
        (
            Method::POST,
            "/v1/credentials",
            Some(create("MY_API", VALUE)),
        ),
        (Method::GET, "/v1/credentials", None),
        (Method::GET, "/v1/credentials/MY_API", None),
        (
            Method::PUT,
            "/v1/credentials/MY_API",
            Some(json!({"value": VALUE})),
        ),
        (Method::DELETE, "/v1/credentials/MY_API", None),
        (
            Method::POST,
            "/v1/credentials",
            Some(json!({"not": "a credential"})),
        ),
    ];
    for (method, path, body) in calls {
        let (status, answer) = call(&gw, method.clone(), path, body).await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (503, Some("credentials_unavailable")),
            "{method} {path}"
        );
    }
    // The rest of the admin API is unaffected.
    assert_eq!(call(&gw, Method::GET, "/v1/apps", None).await.0, 200);
}

async fn apps_name_their_own_credentials(gw: &TestGateway) {
    for name in ["TENANT_A", "SHARED"] {
        let (status, _) = call(
            gw,
            Method::POST,
            "/v1/credentials",
            Some(create(name, VALUE)),
        )
        .await;
        assert_eq!(status, 201);
    }
    let body = json!({"name": "tenant-a", "scopes": ["deploy_tool"], "credentials": {"tools": "TENANT_A"}});
    let (status, app) = call(gw, Method::POST, "/v1/apps", Some(body)).await;
    assert_eq!(status, 201, "{app}");
    assert_eq!(app["credentials"], json!({"tools": "TENANT_A"}));
    let id = app["id"].as_str().expect("id").to_owned();
    let (_, plain) = call(
        gw,
        Method::POST,
        "/v1/apps",
        Some(json!({"name": "plain", "scopes": []})),
    )
    .await;
    assert_eq!(plain["credentials"], json!({}));

    for (credentials, part) in [
        (json!({"nowhere": "TENANT_A"}), "unknown upstream"),
        (json!({"tools": "MISSING"}), "no credential"),
        (json!({"tools": "bad name"}), "credential name"),
    ] {
        let body = json!({"name": "other", "scopes": [], "credentials": credentials});
        let (status, answer) = call(gw, Method::POST, "/v1/apps", Some(body)).await;
        assert_eq!(status, 422, "{answer}");
        let message = answer["error"]["message"].as_str().expect("message");
        assert!(
            message.starts_with("credentials") && message.contains(part),
            "{message}"
        );
        let patch = json!({"credentials": credentials});
        let (status, _) = call(gw, Method::PATCH, &format!("/v1/apps/{id}"), Some(patch)).await;
        assert_eq!(status, 422);
    }

    let (status, patched) = call(
        gw,
        Method::PATCH,
        &format!("/v1/apps/{id}"),
        Some(json!({"credentials": {"tools": "TENANT_A", "prefixed": "SHARED"}})),
    )
    .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(
        patched["credentials"],
        json!({"prefixed": "SHARED", "tools": "TENANT_A"})
    );
    let (_, shown) = call(gw, Method::GET, &format!("/v1/apps/{id}"), None).await;
    assert_eq!(shown["credentials"], patched["credentials"]);

    let (_, credential) = call(gw, Method::GET, "/v1/credentials/TENANT_A", None).await;
    assert_eq!(
        credential["used_by"],
        json!({"upstreams": [], "apps": [{"id": id, "name": "tenant-a", "upstream": "tools"}]})
    );
    let (_, list) = call(gw, Method::GET, "/v1/credentials?search=shared", None).await;
    assert_eq!(list[0]["used_by"]["apps"][0]["upstream"], "prefixed");

    let (status, refused) = call(gw, Method::DELETE, "/v1/credentials/TENANT_A", None).await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (409, Some("conflict"))
    );
    let message = refused["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("tenant-a") && message.contains("tools"),
        "{message}"
    );
    let (status, _) = call(gw, Method::GET, "/v1/credentials/TENANT_A", None).await;
    assert_eq!(status, 200, "still there");

    let (status, _) = call(
        gw,
        Method::PATCH,
        &format!("/v1/apps/{id}"),
        Some(json!({"credentials": {"prefixed": "SHARED"}})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = call(gw, Method::DELETE, "/v1/credentials/TENANT_A", None).await;
    assert_eq!(status, 204);
    // Deleting the app frees the other one.
    let (status, _) = call(gw, Method::DELETE, &format!("/v1/apps/{id}"), None).await;
    assert_eq!(status, 204);
    let (status, _) = call(gw, Method::DELETE, "/v1/credentials/SHARED", None).await;
    assert_eq!(status, 204);

    let (_, audit) = call(gw, Method::GET, &format!("/v1/audit?app={id}"), None).await;
    let updated = audit
        .as_array()
        .expect("array")
        .iter()
        .find(|e| e["action"] == "app.updated")
        .expect("app.updated");
    assert_eq!(
        updated["details"]["credentials"]["before"],
        json!({"prefixed": "SHARED", "tools": "TENANT_A"})
    );
}

#[tokio::test]
async fn apps_name_their_own_credentials_on_the_embedded_store() {
    let gw = gateway(None, true).await;
    apps_name_their_own_credentials(&gw).await;
}

#[tokio::test]
async fn apps_name_their_own_credentials_on_redis() {
    let redis = RedisServer::start();
    let gw = gateway(Some(&redis), true).await;
    apps_name_their_own_credentials(&gw).await;
}

/// `scopegate ARGS -c CONFIG` with the admin token, `env` and `stdin` fed to it.
async fn scopegate_with(
    config: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: &str,
) -> common::process::Run {
    use tokio::io::AsyncWriteExt;
    let mut command = tokio::process::Command::new(common::process::BIN);
    command
        .args(args)
        .arg("-c")
        .arg(config)
        .env(common::process::TOKEN_ENV, ADMIN_TOKEN)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("spawn scopegate");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(stdin.as_bytes())
        .await
        .expect("write stdin");
    drop(input);
    let output = child.wait_with_output().await.expect("run scopegate");
    common::process::Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[tokio::test]
async fn the_cli_reads_values_from_stdin_or_a_file_and_never_prints_them() {
    let dir = tempfile::tempdir().expect("dir");
    let mut serve = ServeProcess::start(dir.path(), &process_yaml(dir.path(), None)).await;
    let config = serve.config();
    let add = scopegate_with(
        &config,
        &[
            "credentials",
            "add",
            "MY_API",
            "--description",
            "OpenAI, team A",
        ],
        &[],
        &format!("{VALUE}\n"),
    )
    .await;
    assert_eq!(add.code, Some(0), "{add:?}");
    let masked = format!("sk-{}0Ue", "*".repeat(VALUE.len() - 6));
    assert!(
        add.stdout.contains(&masked),
        "one trailing newline dropped: {add:?}"
    );

    let file = dir.path().join("new.value");
    std::fs::write(&file, format!("{NEW_VALUE}\r\n")).expect("value file");
    let update = scopegate_with(
        &config,
        &[
            "credentials",
            "update",
            "MY_API",
            "--value-file",
            file.to_str().expect("path"),
        ],
        &[],
        "",
    )
    .await;
    assert_eq!(update.code, Some(0), "{update:?}");
    let list = scopegate_with(
        &config,
        &["credentials", "list", "--search", "my_"],
        &[],
        "",
    )
    .await;
    assert_eq!(list.code, Some(0), "{list:?}");
    assert!(
        list.stdout.contains("MY_API") && list.stdout.contains("sk-********0Pm"),
        "{list:?}"
    );
    let show = scopegate_with(
        &config,
        &["credentials", "show", "MY_API", "--json"],
        &[],
        "",
    )
    .await;
    let shown: Value = serde_json::from_str(&show.stdout).expect("json");
    assert!(
        shown["masked"].as_str().expect("masked").ends_with("0Pm"),
        "{shown}"
    );
    assert_eq!(shown["description"], "OpenAI, team A");

    let bad = scopegate_with(
        &config,
        &["credentials", "add", "BAD"],
        &[],
        &format!("{VALUE}\n\n"),
    )
    .await;
    assert_eq!(
        bad.code,
        Some(1),
        "a second newline is part of the value: {bad:?}"
    );
    assert!(bad.stderr.contains("value"), "{bad:?}");
    let missing = scopegate_with(&config, &["credentials", "show", "NOPE"], &[], "").await;
    assert_eq!(missing.code, Some(1));
    assert!(
        missing.stderr.contains("credential \"NOPE\" not found"),
        "{missing:?}"
    );
    let delete = scopegate_with(&config, &["credentials", "delete", "MY_API"], &[], "").await;
    assert_eq!(delete.code, Some(0), "{delete:?}");

    serve.stop().await;
    for run in [&add, &update, &list, &show, &bad, &missing, &delete] {
        assert_clean(
            "the CLI's output",
            format!("{}{}", run.stdout, run.stderr).as_bytes(),
        );
    }
    assert_clean("the log", serve.output().as_bytes());
}

#[tokio::test]
async fn rewrap_moves_every_value_to_the_new_master_key() {
    let dir = tempfile::tempdir().expect("dir");
    let yaml = process_yaml(dir.path(), None);
    let old_text = std::fs::read_to_string(dir.path().join("master.key")).expect("key");
    let mut serve = ServeProcess::start(dir.path(), &yaml).await;
    for name in ["ONE", "TWO"] {
        let answer = common::http::send(
            Method::POST,
            &format!("http://{}/v1/credentials", serve.admin),
            &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
            create(name, VALUE).to_string(),
        )
        .await;
        assert_eq!(answer.status, 201);
    }
    let config = serve.config();
    serve.stop().await;

    let new = MasterKey::generate();
    std::fs::write(dir.path().join("master.key"), new.to_base64().as_str()).expect("new key");
    let env = [("OLD_MASTER_KEY", old_text.as_str())];
    let args = ["credentials", "rewrap", "--old-key-env", "OLD_MASTER_KEY"];
    let first = scopegate_with(&config, &args, &env, "").await;
    assert_eq!(first.code, Some(0), "{first:?}");
    assert!(
        first
            .stdout
            .contains("rewrapped 2 credential(s); 0 already"),
        "{first:?}"
    );
    let again = scopegate_with(&config, &args, &env, "").await;
    assert!(
        again
            .stdout
            .contains("rewrapped 0 credential(s); 2 already"),
        "{again:?}"
    );
    let unset = scopegate_with(
        &config,
        &["credentials", "rewrap", "--old-key-env", "NOT_SET_VAR"],
        &[],
        "",
    )
    .await;
    assert_eq!(unset.code, Some(1));
    assert!(unset.stderr.contains("NOT_SET_VAR"), "{unset:?}");

    let old = MasterKey::from_base64(&old_text).expect("old key");
    let store = scopegate::store::EmbeddedStore::open(&dir.path().join("data")).expect("store");
    use scopegate::store::prelude::*;
    for name in ["ONE", "TWO"] {
        let record = store
            .get_credential(name)
            .await
            .expect("read")
            .expect("stored");
        let value =
            scopegate::credentials::open(&new, name, &record.sealed).expect("new key opens it");
        assert_eq!(value.expose(), VALUE);
        assert!(scopegate::credentials::open(&old, name, &record.sealed).is_err());
        assert_eq!(record.updated_by, "rewrap");
    }
    let page = scopegate::model::PageRequest {
        cursor: None,
        limit: 100,
    };
    let events = store.list_audit(page, &|_| true).await.expect("audit");
    let rewrapped = events
        .items
        .iter()
        .filter(|e| e.action == "credential.updated" && e.details["rewrapped"] == true)
        .count();
    assert_eq!(rewrapped, 2);
    assert_clean("rewrap's output", format!("{first:?}{again:?}").as_bytes());
}
