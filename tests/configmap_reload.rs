//! Hot reload of a config mounted from a Kubernetes ConfigMap (deploy/kubernetes/).
//!
//! The kubelet never writes the config file itself: `gateway.yaml` is a symlink to
//! `..data/gateway.yaml`, `..data` a symlink to a timestamped folder, and an update swaps
//! `..data` (a new folder, a `..data_tmp` link to it renamed over `..data`, the old folder
//! deleted). The real binary serves `-c <volume>/gateway.yaml` while this test updates the
//! volume exactly that way: a valid edit, a broken one, and a second valid one after the first
//! folder is gone.

mod common;

use common::gateway::{config_yaml, Upstreams};
use common::http::get;
use common::process::ServeProcess;
use common::upstream::Upstream;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long to poll for an outcome. Generous: the machine may be busy; the contract's 2 s is
/// not what this test measures.
const PATIENCE: Duration = Duration::from_secs(15);
const CONFIG: &str = "gateway.yaml";

/// A ConfigMap volume laid out as the kubelet's atomic writer does.
struct ConfigMapVolume {
    folder: PathBuf,
    /// The timestamped folder `..data` points at now.
    current: String,
    updates: u32,
}

impl ConfigMapVolume {
    /// `folder/gateway.yaml -> ..data/gateway.yaml`, `..data -> ..<timestamp>/`.
    fn create(folder: &Path, yaml: &str) -> ConfigMapVolume {
        if folder.exists() {
            std::fs::remove_dir_all(folder).expect("remove the previous volume");
        }
        std::fs::create_dir_all(folder).expect("volume folder");
        let mut volume = ConfigMapVolume {
            folder: folder.to_owned(),
            current: String::new(),
            updates: 0,
        };
        volume.current = volume.write_version(yaml);
        symlink(&volume.current, folder.join("..data")).expect("..data");
        symlink(Path::new("..data").join(CONFIG), volume.config()).expect("gateway.yaml");
        volume
    }

    /// The kubelet's update: new folder, `..data_tmp` pointing at it, renamed over `..data`
    /// (atomic), then the old folder deleted. `gateway.yaml` itself is never touched.
    fn update(&mut self, yaml: &str) {
        let next = self.write_version(yaml);
        let tmp = self.folder.join("..data_tmp");
        symlink(&next, &tmp).expect("..data_tmp");
        std::fs::rename(&tmp, self.folder.join("..data")).expect("swap ..data");
        let old = std::mem::replace(&mut self.current, next);
        std::fs::remove_dir_all(self.folder.join(old)).expect("delete the old version");
    }

    /// Writes `yaml` into a new timestamped folder; returns the folder's name.
    fn write_version(&mut self, yaml: &str) -> String {
        self.updates += 1;
        let name = format!("..2026_12_01_18_00_00.{:09}", self.updates);
        let dir = self.folder.join(&name);
        std::fs::create_dir(&dir).expect("version folder");
        std::fs::write(dir.join(CONFIG), yaml).expect("write version");
        name
    }

    fn config(&self) -> PathBuf {
        self.folder.join(CONFIG)
    }

    fn read(&self) -> String {
        std::fs::read_to_string(self.config()).expect("read through the links")
    }

    /// The timestamped folders present: the kubelet keeps only the current one.
    fn versions(&self) -> usize {
        std::fs::read_dir(&self.folder)
            .expect("list")
            .filter(|e| {
                let name = e.as_ref().expect("entry").file_name();
                name.to_string_lossy().starts_with("..2")
            })
            .count()
    }
}

async fn status(url: &str) -> u16 {
    get(url, &[]).await.status.as_u16()
}

async fn reloads(gw: &ServeProcess, result: &str) -> f64 {
    let answer = get(&format!("http://{}/metrics", gw.metrics), &[]).await;
    let samples = common::prom::parse(&String::from_utf8_lossy(&answer.body));
    common::prom::sum(
        &samples,
        "scopegate_config_reloads_total",
        &[("result", result)],
    )
}

/// Polls `check` until it holds; fails with `what` and the gateway's log past [`PATIENCE`].
async fn eventually<F, Fut>(gw: &ServeProcess, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < PATIENCE,
            "{what}: not seen within {PATIENCE:?}; the log's last lines:\n{}",
            last_lines(&gw.output(), 20)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The end of a long log (the polling above writes an access line per try).
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[tokio::test]
async fn a_configmap_update_is_reloaded_and_a_broken_one_refused() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let upstreams = Upstreams {
        tools: upstream.url(),
    };
    let yaml = config_yaml(&upstreams, None, &dir.path().join("data"));
    let folder = dir.path().join("configmap");
    let mut volume = None;
    let gw = ServeProcess::start_placed(dir.path(), &yaml, |text| {
        let created = ConfigMapVolume::create(&folder, text);
        let path = created.config();
        volume = Some(created);
        path
    })
    .await;
    let mut volume = volume.expect("the volume was created");
    let original = volume.read();
    let (v1, v2) = (gw.url("/api/v1/health"), gw.url("/api/v2/health"));
    assert_eq!(status(&v1).await, 200);

    // A valid edit: the health route moves.
    volume.update(&original.replace("path: /api/v1/health", "path: /api/v2/health"));
    eventually(&gw, "the moved route answers", || async {
        status(&v2).await == 200
    })
    .await;
    assert_eq!(status(&v1).await, 404);
    assert_eq!(volume.versions(), 1, "the first version's folder is gone");

    // A broken edit: refused, counted, and the running config stays.
    let errors = reloads(&gw, "error").await;
    volume.update(&original.replace("scope: deploy_tool\n", "scope: deploy_tol\n"));
    eventually(&gw, "the broken edit is counted", || async {
        reloads(&gw, "error").await > errors
    })
    .await;
    assert_eq!(status(&v2).await, 200, "the previous config stays");
    assert_eq!(status(&v1).await, 404);

    // Another valid update, with both earlier folders deleted: the watch still works.
    volume.update(&original);
    eventually(&gw, "the original route is back", || async {
        status(&v1).await == 200
    })
    .await;
    assert_eq!(status(&v2).await, 404);
    assert!(reloads(&gw, "ok").await >= 2.0);
    assert_eq!(gw.config(), folder.join(CONFIG), "served from the volume");
}
