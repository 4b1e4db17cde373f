//! The real `scopegate` binary over real sockets: `check`, `serve` with the management commands,
//! restarts on one data folder, graceful shutdown, streaming uploads and `demo`.
//!
//! The binary does not print the ports it bound, so each start picks free ports, writes them into
//! the config, and starts again with new ones if a port was taken in between.

mod common;

use bytes::Bytes;
use common::gateway::{config_yaml, rand_suffix, Upstreams, ADMIN_TOKEN};
use common::http::{client, get, send, Answer};
use common::process::{scopegate, Run, BIN, TOKEN_ENV};
use common::upstream::Upstream;
use http::{Method, Request};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use scopegate::store::prelude::*;
use scopegate::store::EmbeddedStore;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

const ZERO_LISTEN: &str = "listen: 127.0.0.1:0";
const READY_WITHIN: Duration = Duration::from_secs(10);
const EXIT_WITHIN: Duration = Duration::from_secs(20);
const START_ATTEMPTS: usize = 5;
const MIB: u64 = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Runs a command that must succeed and print JSON; returns that JSON.
async fn scopegate_json(args: &[&str]) -> Value {
    let run = scopegate(args).await;
    assert_eq!(
        run.code,
        Some(0),
        "{args:?}\nstdout: {}\nstderr: {}",
        run.stdout,
        run.stderr
    );
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {}", run.stdout))
}

fn repo_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.yaml")
}

/// `text` with `from`, which must occur exactly once, replaced by `to`.
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "expected exactly one {from:?} in:\n{text}"
    );
    text.replacen(from, to, 1)
}

/// The shared test config, with the admin token in [`TOKEN_ENV`], and room for slow answers:
/// a 10s upstream timeout and a 10s shutdown grace.
fn serve_yaml(upstream: &Upstream, data_dir: &Path) -> String {
    let yaml = config_yaml(
        &Upstreams {
            tools: upstream.url(),
        },
        None,
        data_dir,
    );
    let yaml = replace_once(
        &yaml,
        "token_env: SCOPEGATE_TEST_UNUSED_TOKEN",
        &format!("token_env: {TOKEN_ENV}"),
    );
    let yaml = replace_once(&yaml, "    timeout: 2s", "    timeout: 10s");
    replace_once(&yaml, "shutdown_grace: 5s", "shutdown_grace: 10s")
}

/// Three distinct ports the OS just handed out (free again once this returns).
fn free_addrs() -> [SocketAddr; 3] {
    let listeners: Vec<TcpListener> = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port"))
        .collect();
    let addr = |i: usize| listeners[i].local_addr().expect("local address");
    [addr(0), addr(1), addr(2)]
}

/// `yaml` with its three `listen: 127.0.0.1:0` lines (proxy, admin, metrics, in file order) set to `addrs`.
fn with_listen_addrs(yaml: &str, addrs: [SocketAddr; 3]) -> String {
    assert_eq!(
        yaml.matches(ZERO_LISTEN).count(),
        3,
        "three listen lines to fill in:\n{yaml}"
    );
    addrs.iter().fold(yaml.to_owned(), |text, addr| {
        text.replacen(ZERO_LISTEN, &format!("listen: {addr}"), 1)
    })
}

/// 1-based (line, column) of the first `needle` in `text`.
fn position_of(text: &str, needle: &str) -> (usize, usize) {
    let offset = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in the text"));
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = offset - before.rfind('\n').map_or(0, |nl| nl + 1) + 1;
    (line, column)
}

async fn answers_healthz(metrics: SocketAddr) -> bool {
    let request = Request::get(format!("http://{metrics}/healthz"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    matches!(
        tokio::time::timeout(Duration::from_secs(1), client().request(request)).await,
        Ok(Ok(response)) if response.status() == 200
    )
}

/// Peak resident set size (`VmHWM`) of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM line");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmHWM value");
    kib * 1024
}

/// Sends `bytes` (a multiple of 64 KiB) as a streamed, chunked body generated on the fly.
async fn upload(url: &str, key: &str, bytes: u64) -> Answer {
    const CHUNK_BYTES: usize = 64 * 1024;
    static CHUNK: [u8; CHUNK_BYTES] = [b'x'; CHUNK_BYTES];
    let chunks = bytes / CHUNK_BYTES as u64;
    let body = StreamBody::new(futures_util::stream::iter(
        (0..chunks).map(|_| Ok::<_, Infallible>(Frame::data(Bytes::from_static(&CHUNK)))),
    ));
    let request = Request::post(url)
        .header("x-api-key", key)
        .body(body)
        .expect("request");
    let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let response = client.request(request).await.expect("response");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// A `scopegate serve` (or `demo`) child process; killed if dropped while running.
struct GatewayProcess {
    child: Child,
    pid: u32,
    proxy: SocketAddr,
    admin: SocketAddr,
    metrics: SocketAddr,
    /// `serve` or `demo`: names its stdout and log files.
    command: String,
    /// Holds `gateway.yaml` and the process's stdout and log files.
    dir: PathBuf,
}

impl GatewayProcess {
    /// `scopegate serve` on `yaml`, written to `dir/gateway.yaml` with free listen ports.
    async fn serve(dir: &Path, yaml: &str) -> GatewayProcess {
        Self::start(dir, yaml, "serve").await
    }

    /// `scopegate COMMAND -c dir/gateway.yaml`, once `/healthz` answers 200. Retries with new
    /// ports when one was taken between picking and binding.
    async fn start(dir: &Path, yaml: &str, command: &str) -> GatewayProcess {
        let config = dir.join("gateway.yaml");
        for _ in 0..START_ATTEMPTS {
            let [proxy, admin, metrics] = free_addrs();
            std::fs::write(&config, with_listen_addrs(yaml, [proxy, admin, metrics]))
                .expect("write config");
            let child = Command::new(BIN)
                .arg(command)
                .arg("-c")
                .arg(&config)
                .env(TOKEN_ENV, ADMIN_TOKEN)
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(File::create(dir.join(format!("{command}.stdout"))).expect("stdout file"))
                .stderr(File::create(dir.join(format!("{command}.log"))).expect("log file"))
                .kill_on_drop(true)
                .spawn()
                .expect("spawn scopegate");
            let pid = child.id().expect("pid of a fresh child");
            let mut process = GatewayProcess {
                child,
                pid,
                proxy,
                admin,
                metrics,
                command: command.to_owned(),
                dir: dir.to_owned(),
            };
            if process.wait_ready().await {
                return process;
            }
            let log = process.log();
            assert!(
                log.contains("cannot listen on"),
                "scopegate {command} was not ready within {READY_WITHIN:?}; its log:\n{log}"
            );
            let _ = process.child.kill().await;
        }
        panic!("scopegate {command}: no free ports after {START_ATTEMPTS} attempts");
    }

    /// Polls `/healthz` until 200; `false` if the process exited or never answered.
    async fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + READY_WITHIN;
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return false;
            }
            if answers_healthz(self.metrics).await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    fn config(&self) -> PathBuf {
        self.dir.join("gateway.yaml")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join(format!("{}.log", self.command))).unwrap_or_default()
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.join(format!("{}.stdout", self.command)))
            .unwrap_or_default()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.proxy, path)
    }

    async fn sigterm(&self) {
        let pid = self.pid.to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .expect("run kill");
        assert!(status.success(), "kill -TERM {pid}");
    }

    /// SIGTERM, then the exit status (bounded wait).
    async fn stop_gracefully(&mut self) -> ExitStatus {
        self.sigterm().await;
        self.wait_exit().await
    }

    async fn wait_exit(&mut self) -> ExitStatus {
        match tokio::time::timeout(EXIT_WITHIN, self.child.wait()).await {
            Ok(status) => status.expect("wait for scopegate"),
            Err(_) => panic!(
                "scopegate did not exit within {EXIT_WITHIN:?}; log:\n{}",
                self.log()
            ),
        }
    }

    /// A management command against this process (`-c` its config, token from the environment).
    async fn cli(&self, args: &[&str]) -> Run {
        let config = self.config();
        let config = config.to_str().expect("UTF-8 path");
        let args: Vec<&str> = args.iter().copied().chain(["-c", config]).collect();
        scopegate(&args).await
    }

    async fn cli_json(&self, args: &[&str]) -> Value {
        let config = self.config();
        let config = config.to_str().expect("UTF-8 path");
        let args: Vec<&str> = args
            .iter()
            .copied()
            .chain(["--json", "-c", config])
            .collect();
        scopegate_json(&args).await
    }

    /// An admin API call with the test token.
    async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let auth = format!("Bearer {ADMIN_TOKEN}");
        let headers = [
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ];
        send(
            method,
            &format!("http://{}{}", self.admin, path),
            &headers,
            body,
        )
        .await
    }

    /// A new app with `scopes` and one key for it: (app id, key id, full key).
    async fn app_and_key(&self, name: &str, scopes: &[&str]) -> (String, String, String) {
        let app = self
            .admin(
                Method::POST,
                "/v1/apps",
                Some(json!({"name": name, "scopes": scopes})),
            )
            .await;
        assert_eq!(app.status, 201, "create app: {:?}", app.body);
        let app_id = app.json()["id"].as_str().expect("app id").to_owned();
        let key = self
            .admin(
                Method::POST,
                &format!("/v1/apps/{app_id}/keys"),
                Some(json!({"name": "k"})),
            )
            .await;
        assert_eq!(key.status, 201, "create key: {:?}", key.body);
        let key = key.json();
        (
            app_id,
            key["id"].as_str().expect("key id").to_owned(),
            key["key"].as_str().expect("key").to_owned(),
        )
    }
}

/// One `curl` line as `demo` prints it.
#[derive(Debug, Default)]
struct Curl {
    method: Option<String>,
    url: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Curl {
    fn parse(line: &str) -> Curl {
        let mut words = shell_words(line).into_iter();
        assert_eq!(words.next().as_deref(), Some("curl"), "{line}");
        let mut curl = Curl::default();
        while let Some(word) = words.next() {
            match word.as_str() {
                "-X" => curl.method = words.next(),
                "-H" => {
                    let header = words.next().expect("header after -H");
                    let (name, value) = header.split_once(": ").expect("Name: value");
                    curl.headers.push((name.to_owned(), value.to_owned()));
                }
                "-d" => curl.body = words.next().expect("body after -d"),
                "-i" | "-s" => {}
                url if url.starts_with("http://") => curl.url = url.to_owned(),
                other => panic!("unexpected curl word {other:?} in {line}"),
            }
        }
        curl
    }

    async fn perform(&self) -> Answer {
        let method: Method = self
            .method
            .as_deref()
            .unwrap_or("GET")
            .parse()
            .expect("method");
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        send(method, &self.url, &headers, Bytes::from(self.body.clone())).await
    }
}

/// Splits on spaces outside single quotes, dropping the quotes.
fn shell_words(line: &str) -> Vec<String> {
    let (mut words, mut word, mut quoted) = (Vec::new(), String::new(), false);
    for c in line.chars() {
        match c {
            '\'' => quoted = !quoted,
            ' ' if !quoted => words.extend((!word.is_empty()).then(|| std::mem::take(&mut word))),
            _ => word.push(c),
        }
    }
    words.extend((!word.is_empty()).then_some(word));
    words
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn check_accepts_the_repo_config() {
    let config = repo_config();
    let run = scopegate(&["check", "-c", config.to_str().expect("UTF-8 path")]).await;
    assert_eq!(
        run.code,
        Some(0),
        "stdout: {}\nstderr: {}",
        run.stdout,
        run.stderr
    );
    assert_eq!(run.stdout, "ok\n");
}

#[tokio::test]
async fn check_names_file_line_and_column() {
    let dir = tempfile::tempdir().expect("dir");
    let broken = "\
# two routes name things nobody defined
listen: 127.0.0.1:8080
upstreams:
  tools:
    url: http://127.0.0.1:7001
scopes:
  deploy_tool: Deploy a tool
routes:
  - method: POST
    path: /a
    scope: deploy_tool
    upstream: tools
  - method: POST
    path: /b
    scope: undefined_scope
    upstream: tools
  - method: GET
    path: /c
    scope: public
    upstream: undefined_upstream
";
    let path = dir.path().join("broken.yaml");
    std::fs::write(&path, broken).expect("write");
    let file = path.to_str().expect("UTF-8 path");
    let run = scopegate(&["check", "-c", file]).await;
    assert_eq!(
        run.code,
        Some(1),
        "stdout: {}\nstderr: {}",
        run.stdout,
        run.stderr
    );
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "one line per problem:\n{}", run.stdout);
    let expected = [
        ("undefined_scope", "routes[1].scope"),
        ("undefined_upstream", "routes[2].upstream"),
    ];
    for (value, field) in expected {
        let (line, column) = position_of(broken, value);
        let prefix = format!("{file}:{line}:{column}: ");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&prefix) && l.contains(field) && l.contains(value)),
            "expected a line starting {prefix:?} naming {field} and {value}:\n{}",
            run.stdout
        );
    }

    let typo = "# listen, misspelt\nlistne: 127.0.0.1:8080\nupstreams:\n  tools:\n    url: http://127.0.0.1:7001\nroutes:\n  - method: GET\n    path: /health\n    scope: public\n    upstream: tools\n";
    let path = dir.path().join("typo.yaml");
    std::fs::write(&path, typo).expect("write");
    let file = path.to_str().expect("UTF-8 path");
    let run = scopegate(&["check", "-c", file]).await;
    assert_eq!(
        run.code,
        Some(1),
        "stdout: {}\nstderr: {}",
        run.stdout,
        run.stderr
    );
    let (line, column) = position_of(typo, "listne");
    let prefix = format!("{file}:{line}:{column}: ");
    assert!(
        run.stdout
            .lines()
            .any(|l| l.starts_with(&prefix) && l.contains("unknown field `listne`")),
        "expected {prefix:?} and unknown field `listne`:\n{}",
        run.stdout
    );
}

#[tokio::test]
async fn cli_creates_app_and_key_and_the_key_works() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let gw =
        GatewayProcess::serve(dir.path(), &serve_yaml(&upstream, &dir.path().join("data"))).await;
    let name = format!("cli-app-{}", rand_suffix());

    let app = gw
        .cli_json(&[
            "apps",
            "create",
            "--name",
            &name,
            "--scopes",
            "view_job_status",
        ])
        .await;
    assert_eq!(app["name"], name.as_str());
    assert_eq!(app["scopes"], json!(["view_job_status"]));
    assert_eq!(app["created_by"], "admin");
    let app_id = app["id"].as_str().expect("app id").to_owned();

    let created = gw
        .cli_json(&["keys", "create", "--app", &app_id, "--name", "k"])
        .await;
    let key = created["key"].as_str().expect("full key").to_owned();
    let key_id = created["id"].as_str().expect("key id").to_owned();
    assert_eq!(created["app_id"], app_id.as_str());
    assert_eq!(
        key.split('_').collect::<Vec<_>>(),
        ["sg", key_id.as_str(), &key[4 + key_id.len()..]]
    );

    let answer = get(&gw.url("/api/v1/jobs/42"), &[("x-api-key", &key)]).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let seen = upstream.last();
    assert_eq!(seen.target, "/api/v1/jobs/42");
    assert_eq!(seen.headers["x-scopegate-app"], app_id.as_str());
    assert_eq!(seen.headers["x-scopegate-key"], key_id.as_str());

    let table = gw.cli(&["apps", "list"]).await;
    assert_eq!(table.code, Some(0), "{}", table.stderr);
    assert!(
        table.stdout.starts_with("ID "),
        "a table with a header:\n{}",
        table.stdout
    );
    let row = table
        .stdout
        .lines()
        .find(|l| l.contains(&name))
        .expect("the app's row");
    assert!(
        row.starts_with(&app_id) && row.contains("view_job_status"),
        "{row}"
    );

    let listed = gw.cli_json(&["keys", "list", "--app", &app_id]).await;
    let listed = listed.as_array().expect("a list");
    assert_eq!(listed.len(), 1, "{listed:?}");
    let masked = format!(
        "{}{}{}",
        &key[..4],
        "*".repeat(key.len() - 8),
        &key[key.len() - 4..]
    );
    assert_eq!(listed[0]["id"], key_id.as_str());
    assert_eq!(listed[0]["masked"], masked.as_str());
    assert!(
        listed[0].get("key").is_none(),
        "the full key is never listed: {:?}",
        listed[0]
    );

    let updated = gw
        .cli_json(&["apps", "update", &app_id, "--scopes", "deploy_tool"])
        .await;
    assert_eq!(updated["scopes"], json!(["deploy_tool"]));
    let answer = get(&gw.url("/api/v1/jobs/42"), &[("x-api-key", &key)]).await;
    assert_eq!(
        (answer.status.as_u16(), answer.error_code().as_str()),
        (403, "scope_denied")
    );
    let answer = send(
        Method::POST,
        &gw.url("/api/v1/tools/t1/deploy"),
        &[("x-api-key", &key)],
        Bytes::new(),
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);

    let revoked = gw.cli(&["keys", "revoke", &key_id]).await;
    assert_eq!(revoked.code, Some(0), "{}", revoked.stderr);
    let answer = send(
        Method::POST,
        &gw.url("/api/v1/tools/t1/deploy"),
        &[("x-api-key", &key)],
        Bytes::new(),
    )
    .await;
    assert_eq!(
        (answer.status.as_u16(), answer.error_code().as_str()),
        (401, "invalid_key")
    );
}

#[tokio::test]
async fn embedded_store_survives_restart() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let yaml = serve_yaml(&upstream, &dir.path().join("data"));
    let name = format!("durable-{}", rand_suffix());
    let mut gw = GatewayProcess::serve(dir.path(), &yaml).await;
    let (app_id, key_id, key) = gw.app_and_key(&name, &["view_job_status"]).await;
    let status = gw.stop_gracefully().await;
    assert_eq!(status.code(), Some(0), "log:\n{}", gw.log());

    let gw = GatewayProcess::serve(dir.path(), &yaml).await;
    let answer = get(&gw.url("/api/v1/jobs/7"), &[("x-api-key", &key)]).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(upstream.last().headers["x-scopegate-key"], key_id.as_str());
    let apps = gw.admin(Method::GET, "/v1/apps", None).await;
    assert_eq!(apps.status, 200);
    let apps = apps.json();
    let app = apps
        .as_array()
        .expect("list")
        .iter()
        .find(|a| a["id"] == app_id.as_str())
        .cloned();
    let app = app.unwrap_or_else(|| panic!("app {app_id} listed after restart: {apps}"));
    assert_eq!(app["name"], name.as_str());
    assert_eq!(app["scopes"], json!(["view_job_status"]));
}

#[tokio::test]
async fn sigterm_drains_in_flight_request_and_flushes_last_used() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let mut gw = GatewayProcess::serve(dir.path(), &serve_yaml(&upstream, &data)).await;
    let (_, slow_id, slow_key) = gw
        .app_and_key(&format!("slow-{}", rand_suffix()), &["view_job_status"])
        .await;
    let (_, quick_id, quick_key) = gw
        .app_and_key(&format!("quick-{}", rand_suffix()), &["view_job_status"])
        .await;

    let url = gw.url("/api/v1/jobs/1/sleep");
    let in_flight = tokio::spawn(async move { get(&url, &[("x-api-key", &slow_key)]).await });
    let deadline = Instant::now() + Duration::from_secs(10);
    while upstream.count() == 0 {
        assert!(
            Instant::now() < deadline,
            "the slow request never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A use just before the signal: most likely not yet written by the periodic flush.
    let quick = get(&gw.url("/api/v1/jobs/2"), &[("x-api-key", &quick_key)]).await;
    assert_eq!(quick.status, 200, "{:?}", quick.body);
    gw.sigterm().await;

    let answer = in_flight.await.expect("request task");
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.json()["target"], "/api/v1/jobs/1/sleep");
    let status = gw.wait_exit().await;
    assert_eq!(status.code(), Some(0), "log:\n{}", gw.log());

    let store = EmbeddedStore::open(&data).expect("open the store the process left");
    for id in [&slow_id, &quick_id] {
        let record = store
            .get_key(id)
            .await
            .expect("read key")
            .expect("key exists");
        assert!(
            record.last_used_at.is_some(),
            "last use of {id} flushed at shutdown: {record:?}"
        );
        let today = scopegate::model::utc_date(scopegate::model::now_unix());
        let counted = store
            .usage(scopegate::model::UsageSubject::Key(id), &[today])
            .await
            .expect("read usage");
        assert_eq!(
            counted,
            vec![1],
            "the use of {id} is counted in the store after exit"
        );
    }
}

#[tokio::test]
async fn upload_of_50_mib_streams_without_buffering() {
    const UPLOAD: u64 = 50 * MIB;
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let gw =
        GatewayProcess::serve(dir.path(), &serve_yaml(&upstream, &dir.path().join("data"))).await;
    let (_, _, key) = gw
        .app_and_key(&format!("uploader-{}", rand_suffix()), &["upload_file"])
        .await;
    let warm_up = upload(&gw.url("/api/v1/files/upload"), &key, MIB).await;
    assert_eq!(warm_up.status, 200, "{:?}", warm_up.body);

    let before = peak_rss(gw.pid);
    let answer = upload(&gw.url("/api/v1/files/upload"), &key, UPLOAD).await;
    let after = peak_rss(gw.pid);
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.json()["received"], UPLOAD);
    assert_eq!(upstream.last().body_len, UPLOAD);
    assert!(
        after - before < 25 * MIB,
        "peak RSS grew by {} MiB (from {} MiB) for a {} MiB upload",
        (after - before) / MIB,
        before / MIB,
        UPLOAD / MIB
    );
}

#[tokio::test]
async fn demo_prints_working_curl_lines() {
    let dir = tempfile::tempdir().expect("dir");
    let repo = std::fs::read_to_string(repo_config()).expect("read gateway.yaml");
    let yaml = ["127.0.0.1:8080", "127.0.0.1:8001", "127.0.0.1:8100"]
        .iter()
        .fold(repo, |text, addr| {
            replace_once(&text, &format!("listen: {addr}"), ZERO_LISTEN)
        });
    let mut demo = GatewayProcess::start(dir.path(), &yaml, "demo").await;

    let deadline = Instant::now() + READY_WITHIN;
    let stdout = loop {
        let stdout = demo.stdout();
        if stdout.contains("/api/v1/models/llama/deploy") {
            break stdout;
        }
        assert!(
            Instant::now() < deadline,
            "no curl lines yet:\n{stdout}\nlog:\n{}",
            demo.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let curl_line = |what: &str| {
        let line = stdout
            .lines()
            .find(|l| l.starts_with("curl ") && l.contains("X-API-Key") && l.contains(what));
        Curl::parse(line.unwrap_or_else(|| panic!("a curl line with a key for {what}:\n{stdout}")))
    };

    let allowed = curl_line("/api/v1/tools/web-search/deploy");
    assert_eq!(
        allowed.url,
        format!("http://{}/api/v1/tools/web-search/deploy", demo.proxy)
    );
    assert_eq!(allowed.method.as_deref(), Some("POST"));
    let answer = allowed.perform().await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let echo = answer.json();
    assert_eq!(
        (echo["upstream"].as_str(), echo["path"].as_str()),
        (Some("tools"), Some("/api/v1/tools/web-search/deploy"))
    );

    let denied = curl_line("/api/v1/models/llama/deploy").perform().await;
    assert_eq!(
        (denied.status.as_u16(), denied.error_code().as_str()),
        (403, "scope_denied")
    );
    assert!(
        denied.json()["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("deploy_model"),
        "{:?}",
        denied.body
    );

    let status = demo.stop_gracefully().await;
    assert_eq!(status.code(), Some(0), "log:\n{}", demo.log());
}

#[tokio::test]
async fn broken_edits_are_logged_with_file_line_and_column_and_sighup_reloads() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let mut gw =
        GatewayProcess::serve(dir.path(), &serve_yaml(&upstream, &dir.path().join("data"))).await;
    let good = std::fs::read_to_string(gw.config()).expect("config");
    let broken = replace_once(&good, "scope: deploy_tool\n", "scope: deploy_tol\n");
    std::fs::write(gw.config(), &broken).expect("write broken config");
    let (line, col) = position_of(&broken, "deploy_tol\n");
    let wanted = format!("{}:{line}:{col}:", gw.config().display());
    let mut logged = false;
    for _ in 0..100 {
        if gw.log().contains(&wanted) {
            logged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(logged, "log names {wanted}:\n{}", gw.log());
    assert_eq!(
        get(&gw.url("/api/v1/health"), &[]).await.status,
        200,
        "old config stays"
    );

    // SIGHUP reloads (and does not stop the process). The edit goes through a hard link in
    // another folder, which the file watch does not see: only the signal can apply it.
    let elsewhere = tempfile::tempdir().expect("dir");
    let link = elsewhere.path().join("link.yaml");
    std::fs::hard_link(gw.config(), &link).expect("hard link");
    std::fs::write(
        &link,
        replace_once(&good, "/api/v1/health", "/api/v2/health"),
    )
    .expect("write good config");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        get(&gw.url("/api/v2/health"), &[]).await.status,
        404,
        "not applied before SIGHUP"
    );
    let pid = gw.pid.to_string();
    let status = Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .await
        .expect("kill -HUP");
    assert!(status.success());
    let mut moved = false;
    for _ in 0..100 {
        if get(&gw.url("/api/v2/health"), &[]).await.status == 200 {
            moved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(moved, "log:\n{}", gw.log());
    assert!(gw.log().contains("config reloaded"));
    assert_eq!(gw.stop_gracefully().await.code(), Some(0));
}

/// Connections accepted by each proxy worker so far, from `/metrics`.
async fn worker_connections(gw: &GatewayProcess, workers: usize) -> Vec<u64> {
    let scrape = get(&format!("http://{}/metrics", gw.metrics), &[]).await;
    let text = String::from_utf8_lossy(&scrape.body).into_owned();
    (0..workers)
        .map(|i| {
            let series = format!("scopegate_worker_connections_total{{worker=\"{i}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(series.as_str()))
                .map_or(0, |v| v.trim().parse().expect("a count"))
        })
        .collect()
}

/// `workers: 2`: each worker accepts on its own `SO_REUSEPORT` listener; on SIGTERM both stop
/// accepting and finish what they hold before the process exits.
#[tokio::test]
async fn every_worker_accepts_and_drains_its_requests_on_sigterm() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const WORKERS: usize = 2;
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let yaml = format!(
        "{}workers: {WORKERS}\n",
        serve_yaml(&upstream, &dir.path().join("data"))
    );
    let mut gw = GatewayProcess::serve(dir.path(), &yaml).await;
    let (_, _, key) = gw
        .app_and_key(&format!("workers-{}", rand_suffix()), &["view_job_status"])
        .await;

    // Slow requests (the upstream sleeps 3 s), one connection each, until every worker holds
    // one: each connection's worker is read off the per-worker counters as it is accepted.
    let mut held = Vec::new();
    let mut holding = [false; WORKERS];
    let mut before = worker_connections(&gw, WORKERS).await;
    for n in 0..64 {
        let mut stream = tokio::net::TcpStream::connect(gw.proxy)
            .await
            .expect("connect");
        let request =
            format!("GET /api/v1/jobs/{n}/sleep HTTP/1.1\r\nHost: gw\r\nX-API-Key: {key}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let now = loop {
            let now = worker_connections(&gw, WORKERS).await;
            if now.iter().sum::<u64>() > before.iter().sum::<u64>() {
                break now;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        for (worker, (a, b)) in now.iter().zip(&before).enumerate() {
            holding[worker] |= a > b;
        }
        before = now;
        held.push(stream);
        if holding.iter().all(|h| *h) {
            break;
        }
    }
    assert!(
        holding.iter().all(|h| *h),
        "a worker accepted nothing: {before:?}"
    );

    gw.sigterm().await;
    for mut stream in held {
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(EXIT_WITHIN, stream.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 200 "),
            "{answer}\nlog:\n{}",
            gw.log()
        );
    }
    let status = gw.wait_exit().await;
    assert_eq!(status.code(), Some(0), "log:\n{}", gw.log());
    assert!(
        tokio::net::TcpStream::connect(gw.proxy).await.is_err(),
        "the proxy address still accepts after exit"
    );
    assert!(gw.log().contains("scopegate stopped"), "{}", gw.log());
}
