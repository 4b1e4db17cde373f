//! Config hot reload on a running gateway: edits on disk (valid, broken, replaced by rename),
//! explicit reloads, requests in flight and flowing while the config changes.

mod common;

use common::gateway::{config_yaml, TestGateway, Upstreams};
use common::http::get;
use common::upstream::Upstream;
use std::time::{Duration, Instant};

/// The contract's bound for a valid edit to take effect.
const TAKES_EFFECT: Duration = Duration::from_secs(2);

struct Setup {
    upstream: Upstream,
    gw: TestGateway,
    yaml: String,
}

async fn setup() -> Setup {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let yaml = config_yaml(
        &Upstreams {
            tools: upstream.url(),
        },
        None,
        &dir.path().join("data"),
    );
    let gw = TestGateway::start_in(&yaml, dir).await;
    Setup { upstream, gw, yaml }
}

impl Setup {
    fn config_path(&self) -> std::path::PathBuf {
        self.gw.dir.path().join("gateway.yaml")
    }

    /// Writes the file in place, as `echo > file` would.
    fn write(&self, yaml: &str) {
        std::fs::write(self.config_path(), yaml).expect("write config");
    }

    /// Replaces the file by renaming a new one over it, as many editors do.
    fn replace(&self, yaml: &str) {
        let tmp = self.gw.dir.path().join(".gateway.yaml.swp");
        std::fs::write(&tmp, yaml).expect("write temp");
        std::fs::rename(&tmp, self.config_path()).expect("rename");
    }

    async fn reloads(&self, result: &str) -> f64 {
        let text = get(&format!("http://{}/metrics", self.gw.metrics), &[]).await;
        let samples = common::prom::parse(&String::from_utf8_lossy(&text.body));
        common::prom::sum(
            &samples,
            "scopegate_config_reloads_total",
            &[("result", result)],
        )
    }
}

/// The test config with the public health route moved to a new path.
fn moved_health(yaml: &str) -> String {
    yaml.replace("path: /api/v1/health", "path: /api/v2/health")
}

async fn status(url: &str) -> u16 {
    get(url, &[]).await.status.as_u16()
}

async fn wait_until(url: &str, want: u16) -> Duration {
    let started = Instant::now();
    loop {
        if status(url).await == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < TAKES_EFFECT,
            "{url} did not turn {want} within {TAKES_EFFECT:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn a_valid_edit_on_disk_takes_effect_within_two_seconds() {
    let s = setup().await;
    assert_eq!(status(&s.gw.url("/api/v1/health")).await, 200);
    s.write(&moved_health(&s.yaml));
    let took = wait_until(&s.gw.url("/api/v2/health"), 200).await;
    println!("edit took effect after {took:?}");
    assert_eq!(status(&s.gw.url("/api/v1/health")).await, 404);
    assert!(s.reloads("ok").await >= 1.0);
}

#[tokio::test]
async fn a_file_replaced_by_rename_is_picked_up() {
    let s = setup().await;
    s.replace(&moved_health(&s.yaml));
    wait_until(&s.gw.url("/api/v2/health"), 200).await;
    // And again: the watch survives the file being replaced.
    s.replace(&s.yaml);
    wait_until(&s.gw.url("/api/v1/health"), 200).await;
}

#[tokio::test]
async fn a_broken_edit_is_refused_counted_and_the_old_config_stays() {
    let s = setup().await;
    let broken = [
        s.yaml
            .replace("scope: deploy_tool\n", "scope: deploy_tol\n"),
        s.yaml
            .replace("listen: 127.0.0.1:0\nadmin:", "listne: 127.0.0.1:0\nadmin:"),
        s.yaml.replace("routes:\n", "routes:\n  - [unclosed\n"),
        moved_health(&s.yaml).replace("upstream: dead", "upstream: nowhere"),
    ];
    for (i, yaml) in broken.iter().enumerate() {
        assert_ne!(yaml, &s.yaml, "case {i} changes the file");
        s.write(yaml);
        let started = Instant::now();
        while s.reloads("error").await < (i + 1) as f64 {
            assert!(
                started.elapsed() < TAKES_EFFECT,
                "case {i}: broken edit not refused in time"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(
            status(&s.gw.url("/api/v1/health")).await,
            200,
            "case {i}: the old config stays"
        );
        assert_eq!(status(&s.gw.url("/api/v2/health")).await, 404, "case {i}");
    }
    assert_eq!(s.reloads("ok").await, 0.0);
}

#[tokio::test]
async fn an_explicit_reload_applies_and_restart_only_settings_keep_their_value() {
    let s = setup().await;
    let proxy = s.gw.proxy;
    // Moving the listener needs a restart: the reload applies the routes and keeps the port.
    let edited = moved_health(&s.yaml).replacen("listen: 127.0.0.1:0", "listen: 127.0.0.1:1", 1);
    // Write through a hard link in another folder: the same file, but the watch on the config's
    // folder does not see it, so only the explicit reload (what SIGHUP does) can apply it.
    let elsewhere = tempfile::tempdir().expect("dir");
    let link = elsewhere.path().join("link.yaml");
    std::fs::hard_link(s.config_path(), &link).expect("hard link");
    std::fs::write(&link, &edited).expect("write through the link");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        status(&format!("http://{proxy}/api/v2/health")).await,
        404,
        "not reloaded yet"
    );
    s.gw.inner.as_ref().expect("running").reload();
    wait_until(&format!("http://{proxy}/api/v2/health"), 200).await;
    assert_eq!(s.reloads("ok").await, 1.0);
}

#[tokio::test]
async fn requests_in_flight_finish_on_the_config_they_started_with() {
    use http_body_util::BodyExt;
    let s = setup().await;
    let key = s.gw.key_with(&["view_job_status"]).await;
    let request = http::Request::get(s.gw.url("/api/v1/jobs/1/stream"))
        .header("x-api-key", &key)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    let response = common::http::client()
        .request(request)
        .await
        .expect("response");
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    body.frame().await.expect("first chunk").expect("ok");

    // Remove the route while its response is still streaming.
    s.write(&s.yaml.replace(
        "path: /api/v1/jobs/{job_id}/stream",
        "path: /api/v1/jobs/{job_id}/gone",
    ));
    // Without a key the old route answered 401; once the edit is live the path matches nothing.
    wait_until(&s.gw.url("/api/v1/jobs/1/stream"), 404).await;
    s.upstream.release_stream();
    let mut rest = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("the in-flight response completes").into_data() {
            rest.extend_from_slice(&data);
        }
    }
    assert!(String::from_utf8_lossy(&rest).contains("data: event 4"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_flows_without_errors_through_many_reloads() {
    let s = setup().await;
    let url = s.gw.url("/api/v1/health");
    let client = common::http::client();
    let traffic = tokio::spawn(async move {
        let mut statuses = Vec::new();
        for _ in 0..300 {
            let request = http::Request::get(&url)
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .expect("request");
            let response = client
                .request(request)
                .await
                .expect("no connection is dropped");
            statuses.push(response.status().as_u16());
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        statuses
    });
    for i in 0..6 {
        let rate = format!("per_second: {}", 1000 + i);
        s.write(&s.yaml.replace("per_second: 1000", &rate));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let statuses = traffic.await.expect("traffic");
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    assert!(s.reloads("ok").await >= 2.0);
}
