//! A gateway in front of one upstream `pool` of several targets (replicas): the config (targets
//! with weights, the upstream's settings, an optional `resolver:`), requests to its public
//! route `/pool/{name}`, the upstream's metrics and admin status, and waiting for things to
//! happen (polling, never a fixed sleep as the assertion).

use super::gateway::TestGateway;
use super::http::{send, Answer};
use super::prom::{self, Sample};
use super::replica::REPLICA_HEADER;
use bytes::Bytes;
use http::Method;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::Instant;

/// The upstream's name in the config.
pub(crate) const UPSTREAM: &str = "pool";
/// How long a test waits for something the gateway does in the background (a health verdict,
/// a reload, a re-resolution) before it fails.
pub(crate) const PATIENCE: Duration = Duration::from_secs(20);

/// The config of a gateway in front of `pool`.
#[derive(Clone, Debug)]
pub(crate) struct PoolConfig {
    /// (url, weight) of each target; weight `None` leaves it out (the default, 1).
    pub targets: Vec<(String, Option<u32>)>,
    /// YAML lines under the upstream, indented as if at the top level (`balance: round_robin`,
    /// `passive:\n  failures: 3`); each is indented under `pool:` here.
    pub settings: Vec<String>,
    /// A top-level `resolver:` line, when set.
    pub resolver: Option<SocketAddr>,
}

impl PoolConfig {
    /// Targets of weight 1 (unwritten).
    pub(crate) fn new(urls: &[String]) -> PoolConfig {
        PoolConfig {
            targets: urls.iter().map(|u| (u.clone(), None)).collect(),
            settings: Vec::new(),
            resolver: None,
        }
    }

    /// Targets with these weights.
    pub(crate) fn weighted(targets: &[(String, u32)]) -> PoolConfig {
        PoolConfig {
            targets: targets.iter().map(|(u, w)| (u.clone(), Some(*w))).collect(),
            settings: Vec::new(),
            resolver: None,
        }
    }

    /// Adds YAML under the upstream (see [`PoolConfig::settings`]).
    pub(crate) fn with(mut self, yaml: &str) -> PoolConfig {
        self.settings.push(yaml.to_owned());
        self
    }

    pub(crate) fn resolver(mut self, dns: SocketAddr) -> PoolConfig {
        self.resolver = Some(dns);
        self
    }

    /// The whole config file, its embedded store in `data`.
    pub(crate) fn yaml(&self, data: &std::path::Path) -> String {
        let resolver = self
            .resolver
            .map(|a| format!("resolver: [\"{a}\"]\n"))
            .unwrap_or_default();
        let mut targets = String::new();
        for (url, weight) in &self.targets {
            targets.push_str(&format!("      - url: {url}\n"));
            if let Some(w) = weight {
                targets.push_str(&format!("        weight: {w}\n"));
            }
        }
        let settings: String = self
            .settings
            .iter()
            .flat_map(|s| s.lines())
            .map(|l| format!("    {l}\n"))
            .collect();
        format!(
            r#"listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
  token_env: SCOPEGATE_TEST_UNUSED_TOKEN
metrics:
  listen: 127.0.0.1:0
store:
  path: {data}
shutdown_grace: 5s
{resolver}scopes:
  view_job_status: View job status
upstreams:
  {UPSTREAM}:
    targets:
{targets}{settings}routes:
  - method: "*"
    path: /pool/{{name}}
    scope: public
    upstream: {UPSTREAM}
"#,
            data = data.display(),
        )
    }

    /// Starts a gateway from this config.
    pub(crate) async fn start(&self) -> TestGateway {
        let dir = tempfile::tempdir().expect("temp dir");
        let yaml = self.yaml(&dir.path().join("data"));
        TestGateway::start_in(&yaml, dir).await
    }

    /// Rewrites `gateway`'s config file with this config (the watcher reloads it).
    pub(crate) fn write_over(&self, gateway: &TestGateway) {
        let yaml = self.yaml(&gateway.data_dir());
        std::fs::write(gateway.config_path(), yaml).expect("rewrite config");
    }
}

/// `method` on `/pool/{name}` with `body`.
pub(crate) async fn call(
    gateway: &TestGateway,
    method: Method,
    name: &str,
    body: impl Into<Bytes>,
) -> Answer {
    call_at(gateway.proxy, method, name, body).await
}

/// Like [`call`], by the proxy's address (so a spawned task can make it).
pub(crate) async fn call_at(
    proxy: SocketAddr,
    method: Method,
    name: impl AsRef<str>,
    body: impl Into<Bytes>,
) -> Answer {
    let name = name.as_ref();
    send(method, &format!("http://{proxy}/pool/{name}"), &[], body).await
}

/// A GET of `/pool/{name}`.
pub(crate) async fn get(gateway: &TestGateway, name: &str) -> Answer {
    call(gateway, Method::GET, name, Bytes::new()).await
}

/// Which replica answered (its `x-replica` header), if one did.
pub(crate) fn replica_of(answer: &Answer) -> Option<String> {
    answer
        .headers
        .get(REPLICA_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Every sample on the gateway's `/metrics`.
pub(crate) async fn metrics(gateway: &TestGateway) -> Vec<Sample> {
    let answer = super::http::get(&format!("http://{}/metrics", gateway.metrics), &[]).await;
    assert_eq!(answer.status, 200);
    prom::parse(&String::from_utf8_lossy(&answer.body))
}

/// `scopegate_upstream_target_up{upstream="pool",target}`, if exported.
pub(crate) async fn target_up(gateway: &TestGateway, target: &str) -> Option<f64> {
    metrics(gateway)
        .await
        .into_iter()
        .find(|s| {
            s.name == "scopegate_upstream_target_up"
                && s.labels.get("upstream").map(String::as_str) == Some(UPSTREAM)
                && s.labels.get("target").map(String::as_str) == Some(target)
        })
        .map(|s| s.value)
}

/// The sum of the `pool` upstream's samples of `name` with these further labels.
pub(crate) async fn pool_metric(gateway: &TestGateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut all = vec![("upstream", UPSTREAM)];
    all.extend_from_slice(labels);
    prom::sum(&metrics(gateway).await, name, &all)
}

/// `scopegate_upstream_retries_total{upstream="pool"}`.
pub(crate) async fn retries(gateway: &TestGateway) -> f64 {
    pool_metric(gateway, "scopegate_upstream_retries_total", &[]).await
}

/// The `pool` entry of the admin API's `GET /v1/upstreams`.
pub(crate) async fn status(gateway: &TestGateway) -> serde_json::Value {
    let answer = gateway.admin(Method::GET, "/v1/upstreams", None).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    answer
        .json()
        .as_array()
        .expect("a list of upstreams")
        .iter()
        .find(|u| u["name"] == UPSTREAM)
        .cloned()
        .expect("the pool upstream is listed")
}

/// The status entry of the target whose `url` is `url`.
pub(crate) async fn target_status(gateway: &TestGateway, url: &str) -> serde_json::Value {
    status(gateway).await["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .find(|t| t["url"] == url)
        .cloned()
        .unwrap_or_else(|| panic!("{url} is not listed"))
}

/// Polls `check` every 25 ms until it holds; panics naming `what` after [`PATIENCE`].
pub(crate) async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually_within(what, PATIENCE, check).await;
}

pub(crate) async fn eventually_within<F, Fut>(what: &str, patience: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + patience;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "not within {patience:?}: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Runs `total` calls of `one(i)`, `concurrency` at a time; the answers in order of `i`.
pub(crate) async fn many<F, Fut>(total: usize, concurrency: usize, one: F) -> Vec<Answer>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Answer>,
{
    use futures_util::stream::{self, StreamExt};
    stream::iter((0..total).map(one))
        .buffered(concurrency)
        .collect()
        .await
}
