//! An admin write the store applied is carried through whole — the cache invalidation that ends
//! a grant, the audit event, the `admin write` log line — whatever happens to the caller: a
//! client that hangs up mid-call, or a write that outlasts `store.timeout` (503) and commits
//! afterwards. And a roll racing a revoke leaves no key behind that nobody was shown.
//!
//! The embedded store is slowed by holding the runtime's only blocking thread (its operations
//! run on tokio's blocking pool, first come first served), so a write waits, queued, for as
//! long as the test says; Redis is slowed by a proxy that holds its replies back while the
//! commands themselves apply at once, so the test sees the write land (reading Redis directly)
//! before it hangs up.

mod common;

use common::delay_proxy::DelayProxy;
use common::gateway::{config_yaml, TestGateway, Upstreams, ADMIN_TOKEN};
use common::http::{send, Answer};
use common::instances::{redis_conn, slow_pair};
use common::process::ServeProcess;
use common::redis::RedisServer;
use common::upstream::Upstream;
use http::Method;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The contract's bound for a change to take effect after the admin API's answer.
const PROPAGATION: Duration = Duration::from_secs(1);
/// Ample for a request to reach its store call on a loaded machine; the write then waits,
/// queued, until the test lets it through.
const REACH_THE_STORE: Duration = Duration::from_millis(300);

/// A runtime whose blocking pool has one thread, so [`BlockingGate`] can hold the embedded
/// store's next operations back.
fn one_blocking_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Holds the runtime's only blocking thread until released.
struct BlockingGate {
    release: std::sync::mpsc::Sender<()>,
}

impl BlockingGate {
    async fn hold() -> BlockingGate {
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let (started, running) = tokio::sync::oneshot::channel();
        tokio::task::spawn_blocking(move || {
            let _ = started.send(());
            let _ = wait.recv();
        });
        tokio::time::timeout(Duration::from_secs(10), running)
            .await
            .expect("the blocking thread never came free")
            .expect("gate");
        BlockingGate { release }
    }

    fn release(self) {
        let _ = self.release.send(());
    }
}

/// An embedded-store gateway whose store operations give up after `store_timeout`.
async fn embedded_gateway(upstream: &Upstream, store_timeout: &str) -> TestGateway {
    TestGateway::in_front_of(&upstream.url(), |yaml| {
        yaml.replace("store:\n", &format!("store:\n  timeout: {store_timeout}\n"))
    })
    .await
}

/// Sends `method path` with `body` to the admin API at `admin`, waits `wait`, and hangs up
/// without reading the answer.
async fn hang_up_after(admin: SocketAddr, method: &str, path: &str, body: &str, wait: Duration) {
    let mut socket = send_raw(admin, method, path, body).await;
    tokio::time::sleep(wait).await;
    let _ = socket.shutdown().await;
    drop(socket);
}

async fn send_raw(admin: SocketAddr, method: &str, path: &str, body: &str) -> TcpStream {
    let mut socket = TcpStream::connect(admin).await.expect("connect");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: admin\r\nauthorization: Bearer {ADMIN_TOKEN}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(request.as_bytes()).await.expect("send");
    socket
}

/// Polls the proxy until a deploy with `key` answers `want`, at most [`PROPAGATION`] after
/// `since`.
async fn refused_within(gateway: &TestGateway, key: &str, want: u16, since: Instant) {
    loop {
        let status = gateway.deploy(key).await;
        if status == want {
            return;
        }
        assert!(
            since.elapsed() < PROPAGATION,
            "still {status} {:?} after the write went through (wanted {want})",
            since.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The audit log's actions about `query` (e.g. `key=ID`), newest first.
async fn audit_actions(admin: SocketAddr, query: &str) -> Vec<String> {
    let answer = admin_call(admin, Method::GET, &format!("/v1/audit?{query}"), None).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    answer
        .json()
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|e| e["action"].as_str().map(str::to_owned))
        .collect()
}

async fn admin_call(
    admin: SocketAddr,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Answer {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    send(
        method,
        &format!("http://{admin}{path}"),
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body,
    )
    .await
}

/// Polls until `$check` (an expression that may `.await`) holds, for up to `$within`.
macro_rules! eventually {
    ($within:expr, $what:expr, $check:expr) => {{
        let deadline = Instant::now() + $within;
        while !$check {
            assert!(Instant::now() < deadline, "{}", $what);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }};
}

#[test]
fn embedded_writes_that_outlast_the_store_timeout_still_end_the_grant() {
    one_blocking_thread().block_on(async {
        let upstream = Upstream::start().await;
        let g = embedded_gateway(&upstream, "300ms").await;
        let revoked_app = g.create_app("revoked", &["deploy_tool"]).await;
        let (key_id, revoked_key) = g.create_key(&revoked_app, None).await;
        let narrowed_app = g.create_app("narrowed", &["deploy_tool"]).await;
        let (_, narrowed_key) = g.create_key(&narrowed_app, None).await;
        let deleted_app = g.create_app("deleted", &["deploy_tool"]).await;
        let (_, deleted_key) = g.create_key(&deleted_app, None).await;
        for key in [&revoked_key, &narrowed_key, &deleted_key] {
            assert_eq!(g.deploy(key).await, 200, "cached before the writes");
        }

        let writes = [
            (
                Method::DELETE,
                format!("/v1/keys/{key_id}"),
                None,
                &revoked_key,
                401,
            ),
            (
                Method::PATCH,
                format!("/v1/apps/{narrowed_app}"),
                Some(serde_json::json!({"scopes": []})),
                &narrowed_key,
                403,
            ),
            (
                Method::DELETE,
                format!("/v1/apps/{deleted_app}"),
                None,
                &deleted_key,
                401,
            ),
        ];
        for (method, path, body, key, refused) in writes {
            let gate = BlockingGate::hold().await;
            let answer = g.admin(method.clone(), &path, body).await;
            assert_eq!(
                answer.status, 503,
                "{method} {path}: the write waited past store.timeout"
            );
            gate.release();
            // The write commits now, after its caller was answered: the grant must end all the
            // same, within the contract's bound (not the cache's 30 s ttl).
            refused_within(&g, key, refused, Instant::now()).await;
        }
        let key = g
            .admin(Method::GET, &format!("/v1/keys/{key_id}"), None)
            .await;
        assert_eq!(key.json()["status"], "revoked");
        assert_eq!(
            g.admin(Method::DELETE, &format!("/v1/keys/{key_id}"), None)
                .await
                .status,
            204,
            "revoking again is a no-op"
        );
        assert_eq!(
            audit_actions(g.admin, &format!("key={key_id}")).await[0],
            "key.revoked"
        );
        assert_eq!(
            audit_actions(g.admin, &format!("app={narrowed_app}")).await[0],
            "app.updated"
        );
        assert_eq!(
            audit_actions(g.admin, &format!("app={deleted_app}")).await[0],
            "app.deleted"
        );
    });
}

#[test]
fn embedded_writes_whose_caller_hangs_up_are_carried_through_whole() {
    one_blocking_thread().block_on(async {
        let upstream = Upstream::start().await;
        let g = embedded_gateway(&upstream, "10s").await;
        for round in 0..3 {
            let app = g
                .create_app(&format!("hung-{round}"), &["deploy_tool"])
                .await;
            let (key_id, key) = g.create_key(&app, None).await;
            assert_eq!(g.deploy(&key).await, 200);

            // A revoke whose caller is gone while the write waits for the store.
            let gate = BlockingGate::hold().await;
            let path = format!("/v1/keys/{key_id}");
            hang_up_after(g.admin, "DELETE", &path, "", REACH_THE_STORE).await;
            gate.release();
            let released = Instant::now();
            eventually!(
                Duration::from_secs(5),
                "the revoke never landed",
                audit_actions(g.admin, &format!("key={key_id}")).await[0] == "key.revoked"
            );
            refused_within(&g, &key, 401, released).await;

            // A creation whose caller is gone: applied with its audit event, or not at all.
            let name = format!("created-while-hanging-up-{round}");
            let gate = BlockingGate::hold().await;
            let body = serde_json::json!({"name": name, "scopes": ["deploy_tool"]}).to_string();
            hang_up_after(g.admin, "POST", "/v1/apps", &body, REACH_THE_STORE).await;
            gate.release();
            let search = format!("/v1/apps?search={name}");
            eventually!(
                Duration::from_secs(5),
                "the app never appeared",
                g.admin(Method::GET, &search, None).await.json()[0].is_object()
            );
            let list = g.admin(Method::GET, &search, None).await.json();
            let id = list[0]["id"].as_str().expect("app id").to_owned();
            assert_eq!(
                audit_actions(g.admin, &format!("app={id}")).await,
                ["app.created"],
                "an app created with no audit event"
            );
        }
    });
}

/// A gateway binary on a Redis reached through `proxy`, with room in `store.timeout` for the
/// slowed replies.
async fn binary_on(proxy: &DelayProxy, upstream: &Upstream, dir: &std::path::Path) -> ServeProcess {
    let yaml = config_yaml(
        &Upstreams {
            tools: upstream.url(),
        },
        Some(&proxy.url()),
        &dir.join("data"),
    )
    .replace("  redis: ", "  timeout: 5s\n  redis: ");
    ServeProcess::start(dir, &yaml).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_writes_whose_caller_hangs_up_keep_their_audit_event_and_log_line() {
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let target = format!("127.0.0.1:{}", redis.port()).parse().expect("addr");
    let proxy = DelayProxy::start(target, Duration::from_millis(400)).await;
    let dir = tempfile::tempdir().expect("dir");
    let mut g = binary_on(&proxy, &upstream, dir.path()).await;
    let mut direct = redis_conn(&redis.url()).await;

    for round in 0..3 {
        let created = admin_call(
            g.admin,
            Method::POST,
            "/v1/apps",
            Some(serde_json::json!({"name": format!("app-{round}"), "scopes": ["deploy_tool"]})),
        )
        .await;
        assert_eq!(created.status, 201, "{:?}", created.body);
        let app = created.json()["id"].as_str().expect("id").to_owned();
        let key = admin_call(
            g.admin,
            Method::POST,
            &format!("/v1/apps/{app}/keys"),
            Some(serde_json::json!({"name": "k"})),
        )
        .await;
        let key_id = key.json()["id"].as_str().expect("id").to_owned();

        // Disable: hang up once Redis holds the change (its reply still on the wire).
        let socket = send_raw(g.admin, "POST", &format!("/v1/keys/{key_id}/disable"), "").await;
        let record = format!("sg:key:{key_id}");
        eventually!(
            Duration::from_secs(10),
            "the disable never reached Redis",
            redis::cmd("GET")
                .arg(&record)
                .query_async::<Option<String>>(&mut direct)
                .await
                .expect("get")
                .is_some_and(|j| j.contains("\"disabled\":true"))
        );
        drop(socket);

        // Create: hang up once Redis holds the new app's name claim.
        let name = format!("hung-up-{round}");
        let body = serde_json::json!({"name": name, "scopes": ["deploy_tool"]}).to_string();
        let socket = send_raw(g.admin, "POST", "/v1/apps", &body).await;
        let claim = format!("sg:appname:{name}");
        eventually!(
            Duration::from_secs(10),
            "the create never reached Redis",
            redis::cmd("EXISTS")
                .arg(&claim)
                .query_async::<u64>(&mut direct)
                .await
                .expect("exists")
                == 1
        );
        drop(socket);
        let new_app: String = redis::cmd("GET")
            .arg(&claim)
            .query_async(&mut direct)
            .await
            .expect("claim");

        assert_eq!(
            audit_actions(g.admin, &format!("key={key_id}")).await[0],
            "key.disabled",
            "a disable applied with no audit event"
        );
        assert_eq!(
            audit_actions(g.admin, &format!("app={new_app}")).await,
            ["app.created"],
            "an app created with no audit event"
        );
        let log = g.output();
        for (action, id) in [("key.disabled", &key_id), ("app.created", &new_app)] {
            assert!(
                log.lines().any(|l| l.contains("admin write")
                    && l.contains(action)
                    && l.contains(id.as_str())),
                "no `admin write` log line for {action} {id}:\n{log}"
            );
        }
    }
    g.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_roll_racing_a_revoke_leaves_no_key_nobody_was_shown() {
    let p = slow_pair(Duration::from_millis(300)).await;
    for round in 0..3 {
        let app =
            p.a.create_app(&format!("roll-{round}"), &["deploy_tool"])
                .await;
        let (key_id, _) = p.a.create_key(&app, None).await;
        let b = p.b.clone();
        let roll_path = format!("/v1/keys/{key_id}/roll");
        let roll = tokio::spawn(async move { b.admin(Method::POST, &roll_path, None).await });
        // The roll on B has read the key (Redis answered; the reply is on the wire) ...
        p.proxy.wait_held(&format!("\"id\":\"{key_id}\"")).await;
        // ... when A revokes it.
        let revoked =
            p.a.admin(Method::DELETE, &format!("/v1/keys/{key_id}"), None)
                .await;
        assert_eq!(revoked.status, 204);
        let rolled = roll.await.expect("roll");
        assert_eq!(rolled.status, 409, "{:?}", rolled.body);

        let keys =
            p.a.admin(Method::GET, &format!("/v1/apps/{app}/keys"), None)
                .await;
        let statuses: Vec<String> = keys
            .json()
            .as_array()
            .expect("keys")
            .iter()
            .map(|k| format!("{} {}", k["id"].as_str().unwrap_or(""), k["status"]))
            .collect();
        assert_eq!(
            statuses,
            [format!("{key_id} \"revoked\"")],
            "a key nobody was shown"
        );
        let actions = audit_actions(p.a.admin, &format!("key={key_id}")).await;
        assert!(!actions.iter().any(|a| a == "key.rolled"), "{actions:?}");
    }
}
