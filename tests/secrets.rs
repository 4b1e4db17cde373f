//! A password in `store.redis` is never printed: not by `check`, not by `serve` (its start-up
//! error or its logs), not by a reload, whether the URL is malformed, unreachable or refused
//! by the server. The messages still name the file and the field.
//!
//! Runs the real binary, as operators do, and reads everything it writes.

mod common;

use common::redis::RedisServer;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_scopegate");
/// The password every URL here carries; it must appear in no output.
const PASSWORD: &str = "hunter2";
/// A failed start must be reported well within this.
const EXIT_WITHIN: Duration = Duration::from_secs(20);
/// A reload (watch, settle, load) is logged well within this.
const LOGGED_WITHIN: Duration = Duration::from_secs(10);

/// Malformed URLs with a password, each as the `store:` block it is written in.
const MALFORMED: [&str; 5] = [
    "store:\n  redis: 'redis://user:hunter2@bad host:6379'\n",
    "store:\n  redis: 'redis://:hunter2@127.0.0.1:notaport'\n",
    "store:\n  redis: 'http://user:hunter2@127.0.0.1:6379'\n",
    "store:\n  redis: 'unix:///run/redis.sock?pass=hunter2&db=first'\n",
    // A string where a mapping belongs: the YAML type error quotes the value.
    "store: 'redis://:hunter2@127.0.0.1:6379'\n",
];

/// A config with `store` (a `store:` block), all listeners on port 0.
fn config(store: &str) -> String {
    format!(
        "listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
  token_env: SCOPEGATE_SECRETS_TEST_UNUSED
metrics:
  listen: 127.0.0.1:0
{store}upstreams:
  tools:
    url: http://127.0.0.1:1
routes:
  - method: GET
    path: /health
    scope: public
    upstream: tools
"
    )
}

/// `store` with a short store timeout, so an unreachable store fails fast.
fn redis_store(url: &str) -> String {
    format!("store:\n  redis: '{url}'\n  timeout: 300ms\n")
}

fn write_config(dir: &Path, store: &str) -> PathBuf {
    let path = dir.join("gateway.yaml");
    std::fs::write(&path, config(store)).expect("write config");
    path
}

/// Runs `scopegate COMMAND -c CONFIG` to its end; exit code and everything it printed.
async fn run(command: &str, config: &Path) -> (Option<i32>, String) {
    let output = tokio::time::timeout(
        EXIT_WITHIN,
        Command::new(BIN)
            .args([command, "-c"])
            .arg(config)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("scopegate {command} did not exit within {EXIT_WITHIN:?}"))
    .expect("run scopegate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), text)
}

/// Whether some line says `FILE:LINE:COLUMN: store...` (the `store` block or `store.redis`).
fn names_file_and_field(output: &str, config: &Path) -> bool {
    let file = format!("{}:", config.display());
    output.lines().any(|line| {
        line.split_once(&file).is_some_and(|(_, rest)| {
            let mut parts = rest.splitn(3, ':');
            let numbers = parts.next().is_some_and(|l| l.parse::<u32>().is_ok())
                && parts.next().is_some_and(|c| c.parse::<u32>().is_ok());
            numbers && parts.next().is_some_and(|m| m.starts_with(" store"))
        })
    })
}

fn assert_no_password(output: &str, context: &str) {
    assert!(
        !output.contains(PASSWORD),
        "{context}: the password was printed:\n{output}"
    );
}

#[tokio::test]
async fn check_names_the_field_of_a_malformed_url_without_its_password() {
    let dir = tempfile::tempdir().expect("dir");
    for store in MALFORMED {
        let path = write_config(dir.path(), store);
        let (code, output) = run("check", &path).await;
        assert_eq!(code, Some(1), "{store}: {output}");
        assert_no_password(&output, store);
        assert!(names_file_and_field(&output, &path), "{store}: {output}");
        assert!(
            output.contains("***"),
            "{store}: shows the masked URL: {output}"
        );
    }
}

#[tokio::test]
async fn serve_refuses_a_malformed_url_without_printing_its_password() {
    let dir = tempfile::tempdir().expect("dir");
    for store in MALFORMED {
        let path = write_config(dir.path(), store);
        let (code, output) = run("serve", &path).await;
        assert_eq!(code, Some(1), "{store}: {output}");
        assert_no_password(&output, store);
        assert!(names_file_and_field(&output, &path), "{store}: {output}");
    }
}

/// Starts `scopegate serve -c CONFIG` with its output in files under `dir`; (child, stderr file).
fn spawn_serve(dir: &Path, config: &Path) -> (tokio::process::Child, PathBuf) {
    let err = dir.join("serve.err");
    let child = Command::new(BIN)
        .arg("serve")
        .arg("-c")
        .arg(config)
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("serve.log")).expect("log file"))
        .stderr(std::fs::File::create(&err).expect("err file"))
        .kill_on_drop(true)
        .spawn()
        .expect("spawn scopegate");
    (child, err)
}

#[tokio::test]
async fn serve_reports_an_unreachable_or_refusing_store_without_its_password() {
    // Nothing listens on port 1; the running server knows no such user or password.
    let redis = RedisServer::start();
    let refusing = format!("redis://user:{PASSWORD}@127.0.0.1:{}/", redis.port());
    let shown_refusing = format!("redis://user:***@127.0.0.1:{}/", redis.port());
    for (url, shown) in [
        (
            "redis://user:hunter2@127.0.0.1:1".to_owned(),
            "redis://user:***@127.0.0.1:1".to_owned(),
        ),
        (refusing, shown_refusing),
    ] {
        let dir = tempfile::tempdir().expect("dir");
        let path = write_config(dir.path(), &redis_store(&url));
        let (code, output) = run("check", &path).await;
        assert_eq!(code, Some(0), "check does not connect: {output}");
        // The gateway starts all the same (not ready) and says which store does not answer.
        let (mut child, err) = spawn_serve(dir.path(), &path);
        let text = wait_for_log(&err, "does not answer yet").await;
        wait_for_log(&err, "scopegate listening").await;
        assert!(
            child.try_wait().expect("status").is_none(),
            "serve exited with the store down:\n{text}"
        );
        let _ = child.kill().await;
        let output = std::fs::read_to_string(&err).unwrap_or_default();
        assert_no_password(&output, &url);
        let warning = output
            .lines()
            .find(|l| l.contains("does not answer yet"))
            .unwrap_or_else(|| panic!("{url}: no warning:\n{output}"));
        assert!(warning.contains(&shown), "names the masked URL: {warning}");
        let opening = output
            .lines()
            .find(|l| l.contains("opening the Redis store"))
            .unwrap_or_else(|| panic!("{url}: the store is not logged:\n{output}"));
        assert!(opening.contains(&shown), "{opening}");
    }
}

/// Waits until the file at `log` contains `needle`; its text.
async fn wait_for_log(log: &Path, needle: &str) -> String {
    let deadline = Instant::now() + LOGGED_WITHIN;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} within {LOGGED_WITHIN:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn reloads_never_log_a_store_password() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let embedded = format!("store:\n  path: {}\n", data.display());
    let path = write_config(dir.path(), &embedded);
    let log = dir.path().join("serve.log");
    let mut child = Command::new(BIN)
        .arg("serve")
        .arg("-c")
        .arg(&path)
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).expect("log file"))
        .stderr(std::fs::File::create(dir.path().join("serve.err")).expect("err file"))
        .kill_on_drop(true)
        .spawn()
        .expect("spawn scopegate");
    let err = dir.path().join("serve.err");
    wait_for_log(&err, "scopegate listening").await;

    // A malformed URL: refused, each problem logged with FILE:LINE:COLUMN.
    write_config(dir.path(), MALFORMED[0]);
    let text = wait_for_log(&err, "config reload refused").await;
    assert!(names_file_and_field(&text, &path), "{text}");
    // A well-formed one: applied, except the store, which needs a restart (and says so).
    write_config(dir.path(), &redis_store("redis://user:hunter2@127.0.0.1:1"));
    wait_for_log(&err, "needs a restart").await;

    let _ = child.kill().await;
    let output = format!(
        "{}{}",
        std::fs::read_to_string(&log).unwrap_or_default(),
        std::fs::read_to_string(&err).unwrap_or_default()
    );
    assert_no_password(&output, "reload");
}

/// Misspelled or half-written URLs, with no `://` to say where user info starts, and one that
/// the Redis crate refuses. The password is `S3cret`.
const MISSPELLED: [&str; 6] = [
    "store:\n  redis: 'redis//:S3cret@host'\n",
    "store:\n  redis: 'redis:/user:S3cret@host:6379'\n",
    "store:\n  redis: '//:S3cret@h'\n",
    "store:\n  redis: 'rediss://u:S3cret@h:x'\n",
    "store:\n  redis: 'redis:user:S3cret@host'\n",
    // A string where a mapping belongs: the YAML type error quotes the value.
    "store: 'redis//:S3cret@host'\n",
];

#[tokio::test]
async fn a_misspelled_url_never_shows_its_password() {
    let dir = tempfile::tempdir().expect("dir");
    for store in MISSPELLED {
        let path = write_config(dir.path(), store);
        for command in ["check", "serve"] {
            let (code, output) = run(command, &path).await;
            assert_eq!(code, Some(1), "{command} {store}: {output}");
            assert!(
                !output.contains("S3cret"),
                "{command} {store}: the password was printed:\n{output}"
            );
            assert!(
                names_file_and_field(&output, &path),
                "{command} {store}: {output}"
            );
            assert!(output.contains("***"), "{command} {store}: {output}");
        }
    }
}

#[tokio::test]
async fn a_reload_never_logs_the_password_of_a_misspelled_url() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let embedded = format!("store:\n  path: {}\n", data.display());
    let path = write_config(dir.path(), &embedded);
    let (mut child, err) = spawn_serve(dir.path(), &path);
    wait_for_log(&err, "scopegate listening").await;
    let mut refused = 0;
    for store in MISSPELLED {
        write_config(dir.path(), store);
        refused += 1;
        // Each refusal is one more "reload refused" line.
        let deadline = Instant::now() + LOGGED_WITHIN;
        loop {
            let text = std::fs::read_to_string(&err).unwrap_or_default();
            if text.matches("config reload refused").count() >= refused {
                break;
            }
            assert!(Instant::now() < deadline, "{store}: not refused:\n{text}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let _ = child.kill().await;
    let output = format!(
        "{}{}",
        std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default(),
        std::fs::read_to_string(&err).unwrap_or_default()
    );
    assert!(names_file_and_field(&output, &path), "{output}");
    assert!(
        !output.contains("S3cret"),
        "the reload log printed the password:\n{output}"
    );
}
