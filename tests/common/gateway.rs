//! A whole scopegate, in-process on port 0, from a YAML config; plus admin shortcuts.

use super::http::{send, Answer};
use bytes::Bytes;
use http::Method;
use scopegate::gateway::{self, RunningGateway};
use std::net::SocketAddr;
use std::path::PathBuf;

pub(crate) const ADMIN_TOKEN: &str = "test-admin-token";

/// Where the test config's upstreams point.
pub(crate) struct Upstreams {
    /// The recording upstream.
    pub tools: String,
}

/// The test config: every contract outcome has a route to trigger it.
pub(crate) fn config_yaml(
    upstreams: &Upstreams,
    redis_url: Option<&str>,
    data_dir: &std::path::Path,
) -> String {
    let store = match redis_url {
        Some(url) => format!("  redis: {url}\n"),
        None => format!("  path: {}\n", data_dir.display()),
    };
    format!(
        r#"listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
  token_env: SCOPEGATE_TEST_UNUSED_TOKEN
metrics:
  listen: 127.0.0.1:0
store:
{store}cache:
  ttl: 30s
  max_entries: 10000
rate_limit:
  per_second: 1000
  burst: 1000
shutdown_grace: 5s
scopes:
  deploy_tool: Deploy a tool
  deploy_model: Deploy a model
  view_job_status: View job status
  upload_file: Upload a file
upstreams:
  tools:
    url: {tools}
    timeout: 2s
  dead:
    url: http://127.0.0.1:1
  prefixed:
    url: {tools}/base
routes:
  - method: POST
    path: /api/v1/tools/{{tool_id}}/deploy
    scope: deploy_tool
    upstream: tools
  - method: POST
    path: /api/v1/models/{{model_id}}/deploy
    scope: deploy_model
    upstream: tools
  - method: [GET, HEAD]
    path: /api/v1/jobs/{{job_id}}
    scope: view_job_status
    upstream: tools
  - method: GET
    path: /api/v1/jobs/{{job_id}}/stream
    scope: view_job_status
    upstream: tools
  - method: GET
    path: /api/v1/jobs/{{job_id}}/sleep
    scope: view_job_status
    upstream: tools
  - method: POST
    path: /api/v1/files/upload
    scope: upload_file
    upstream: tools
    max_body: 100MiB
  - method: POST
    path: /api/v1/files/small
    scope: upload_file
    upstream: tools
    max_body: 1KiB
  - method: GET
    path: /api/v1/health
    scope: public
    upstream: tools
  - method: GET
    path: /api/v1/dead
    scope: public
    upstream: dead
  - method: "*"
    path: /api/v1/prefixed/{{anything}}
    scope: public
    upstream: prefixed
"#,
        tools = upstreams.tools,
    )
}

/// A running in-process gateway with its config file and data folder.
pub(crate) struct TestGateway {
    pub inner: Option<RunningGateway>,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub metrics: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl TestGateway {
    /// Starts a gateway from YAML text (written to a temp file so errors name a real file).
    pub(crate) async fn start(yaml: &str) -> TestGateway {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::start_in(yaml, dir).await
    }

    /// The test config in front of `tools` (embedded store in a fresh folder), after `edit`.
    pub(crate) async fn in_front_of(
        tools: &str,
        edit: impl FnOnce(String) -> String,
    ) -> TestGateway {
        let dir = tempfile::tempdir().expect("temp dir");
        let upstreams = Upstreams {
            tools: tools.to_owned(),
        };
        let yaml = edit(config_yaml(&upstreams, None, &dir.path().join("data")));
        Self::start_in(&yaml, dir).await
    }

    pub(crate) async fn start_in(yaml: &str, dir: tempfile::TempDir) -> TestGateway {
        Self::start_with_tokens(yaml, dir, &[("admin", ADMIN_TOKEN)]).await
    }

    /// Like [`TestGateway::start_in`], with these (identity, token) pairs as the admin tokens
    /// (their roles come from the config's `admin.tokens`).
    pub(crate) async fn start_with_tokens(
        yaml: &str,
        dir: tempfile::TempDir,
        tokens: &[(&str, &str)],
    ) -> TestGateway {
        let path = dir.path().join("gateway.yaml");
        std::fs::write(&path, yaml).expect("write config");
        let config = scopegate::config::load(&path).unwrap_or_else(|e| panic!("config: {e}"));
        let tokens = tokens
            .iter()
            .map(|(name, token)| ((*name).to_owned(), (*token).to_owned()))
            .collect();
        let running = gateway::start(config, tokens)
            .await
            .expect("gateway starts");
        TestGateway {
            proxy: running.proxy_addr,
            admin: running.admin_addr,
            metrics: running.metrics_addr,
            inner: Some(running),
            dir,
        }
    }

    /// The config file it was started from (edit it, then [`RunningGateway::reload`]).
    pub(crate) fn config_path(&self) -> PathBuf {
        self.dir.path().join("gateway.yaml")
    }

    pub(crate) fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.proxy, path)
    }

    pub(crate) async fn stop(&mut self) {
        if let Some(g) = self.inner.take() {
            g.shutdown().await;
        }
    }

    /// An admin API call with the test token.
    pub(crate) async fn admin(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Answer {
        self.admin_as(ADMIN_TOKEN, method, path, body).await
    }

    /// An admin API call with `token`.
    pub(crate) async fn admin_as(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Answer {
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let auth = format!("Bearer {token}");
        send(
            method,
            &format!("http://{}{}", self.admin, path),
            &[
                ("authorization", auth.as_str()),
                ("content-type", "application/json"),
            ],
            body,
        )
        .await
    }

    /// Creates an app with these scopes; returns its id.
    pub(crate) async fn create_app(&self, name: &str, scopes: &[&str]) -> String {
        let answer = self
            .admin(
                Method::POST,
                "/v1/apps",
                Some(serde_json::json!({"name": name, "scopes": scopes})),
            )
            .await;
        assert_eq!(answer.status, 201, "create app: {:?}", answer.body);
        answer.json()["id"].as_str().expect("id").to_owned()
    }

    /// Creates a key for an app; returns (key id, full key).
    pub(crate) async fn create_key(
        &self,
        app_id: &str,
        expires_in_days: Option<u32>,
    ) -> (String, String) {
        let mut body = serde_json::json!({"name": "test key"});
        if let Some(d) = expires_in_days {
            body["expires_in_days"] = d.into();
        }
        let answer = self
            .admin(Method::POST, &format!("/v1/apps/{app_id}/keys"), Some(body))
            .await;
        assert_eq!(answer.status, 201, "create key: {:?}", answer.body);
        let json = answer.json();
        (
            json["id"].as_str().expect("id").to_owned(),
            json["key"].as_str().expect("key").to_owned(),
        )
    }

    /// The status of a POST with `key` to the config's `deploy_tool` route.
    pub(crate) async fn deploy(&self, key: &str) -> u16 {
        deploy_at(self.proxy, key).await
    }

    /// An app with these scopes and one key for it: the full key.
    pub(crate) async fn key_with(&self, scopes: &[&str]) -> String {
        let app = self
            .create_app(&format!("app-{}", rand_suffix()), scopes)
            .await;
        self.create_key(&app, None).await.1
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        // Without an explicit stop, the runtime's end tears the tasks down.
        self.inner.take();
    }
}

/// The status of a POST with `key` to the test config's `deploy_tool` route on the proxy at
/// `proxy` (an address, so a spawned task can make the call).
pub(crate) async fn deploy_at(proxy: SocketAddr, key: &str) -> u16 {
    send(
        Method::POST,
        &format!("http://{proxy}/api/v1/tools/t1/deploy"),
        &[("x-api-key", key)],
        Bytes::new(),
    )
    .await
    .status
    .as_u16()
}

pub(crate) fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
