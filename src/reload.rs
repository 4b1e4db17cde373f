//! Config hot reload: watches the config file (and takes explicit triggers such as SIGHUP),
//! validates the new file, and swaps what may change live in one atomic step.
//!
//! The watch sees a file edited in place, one replaced by rename (editors), and a Kubernetes
//! ConfigMap volume, where the config is a symlink that never changes (`gateway.yaml ->
//! ..data/gateway.yaml`) and an update atomically swaps the `..data` link it goes through.
//!
//! A broken edit is refused, logged with `FILE:LINE:COLUMN` and counted; the running config
//! stays. Requests in flight finish on the config they started with (they hold its `Arc`).
//! Settings bound at start (listeners, store, admin identities, connection limits) are never
//! changed live: a reload that changes one says so and keeps the running value.

use crate::cache::KeyCache;
use crate::config::{self, AdminIdentity, Config, StoreConfig};
use crate::live::LiveConfig;
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::proxy::Forwarder;
use crate::tls::TlsAcceptorSource;
use notify::{RecursiveMode, Watcher};
use std::ffi::{OsStr, OsString};
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Editors write a file in several steps (truncate, write, rename): wait for them to settle.
const SETTLE: Duration = Duration::from_millis(150);

/// Settings read once at start.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct FixedSettings {
    listen: SocketAddr,
    tls: bool,
    admin_listen: SocketAddr,
    admin_tokens: Vec<AdminIdentity>,
    metrics_listen: SocketAddr,
    store: StoreConfig,
    cache_max_entries: u64,
    max_connections: usize,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    send_timeout: Duration,
    shutdown_grace: Duration,
    workers: usize,
    log_format: config::LogFormat,
}

impl FixedSettings {
    pub(crate) fn of(c: &Config) -> FixedSettings {
        FixedSettings {
            listen: c.listen,
            tls: c.tls.is_some(),
            admin_listen: c.admin.listen,
            admin_tokens: c.admin.tokens.clone(),
            metrics_listen: c.metrics.listen,
            store: c.store.clone(),
            cache_max_entries: c.cache.max_entries,
            max_connections: c.limits.max_connections,
            header_read_timeout: c.limits.header_read_timeout,
            idle_timeout: c.limits.idle_timeout,
            send_timeout: c.limits.send_timeout,
            shutdown_grace: c.shutdown_grace,
            workers: c.workers,
            log_format: c.log.format,
        }
    }

    /// The names of settings that differ.
    fn changed(&self, new: &FixedSettings) -> Vec<&'static str> {
        let checks: [(&'static str, bool); 14] = [
            ("log.format", self.log_format != new.log_format),
            ("listen", self.listen != new.listen),
            ("tls (on/off)", self.tls != new.tls),
            ("admin.listen", self.admin_listen != new.admin_listen),
            ("admin tokens", self.admin_tokens != new.admin_tokens),
            ("metrics.listen", self.metrics_listen != new.metrics_listen),
            ("store", self.store != new.store),
            (
                "cache.max_entries",
                self.cache_max_entries != new.cache_max_entries,
            ),
            (
                "limits.max_connections",
                self.max_connections != new.max_connections,
            ),
            (
                "limits.header_read_timeout",
                self.header_read_timeout != new.header_read_timeout,
            ),
            ("limits.idle_timeout", self.idle_timeout != new.idle_timeout),
            ("limits.send_timeout", self.send_timeout != new.send_timeout),
            ("shutdown_grace", self.shutdown_grace != new.shutdown_grace),
            ("workers", self.workers != new.workers),
        ];
        checks
            .iter()
            .filter(|(_, changed)| *changed)
            .map(|(name, _)| *name)
            .collect()
    }
}

/// Applies config files to a running gateway.
pub(crate) struct Reloader {
    path: PathBuf,
    fixed: FixedSettings,
    pipeline: Arc<Pipeline>,
    cache: KeyCache,
    metrics: Arc<Metrics>,
    tls: Option<Arc<TlsAcceptorSource>>,
}

impl Reloader {
    /// `fixed` are the settings the gateway started with, from the file at `path`.
    pub(crate) fn new(
        path: PathBuf,
        fixed: FixedSettings,
        pipeline: Arc<Pipeline>,
        cache: KeyCache,
        metrics: Arc<Metrics>,
        tls: Option<Arc<TlsAcceptorSource>>,
    ) -> Reloader {
        Reloader {
            path,
            fixed,
            pipeline,
            cache,
            metrics,
            tls,
        }
    }

    /// Logs every problem, counts one refused reload; the running config stays.
    fn refuse<P: std::fmt::Display>(&self, problems: &[P]) -> bool {
        for problem in problems {
            tracing::error!("config reload refused, the running config stays: {problem}");
        }
        self.metrics.config_reload(false);
        false
    }

    /// Loads the file again; swaps it in if valid. Returns whether it was applied.
    pub(crate) fn reload(&self) -> bool {
        let mut config = match config::load(&self.path) {
            Ok(config) => config,
            Err(errors) => return self.refuse(&errors.problems),
        };
        // Everything that can still fail is prepared before anything is swapped.
        let certificate = match (&self.tls, &config.tls) {
            (Some(_), Some(t)) => match TlsAcceptorSource::load(&t.cert, &t.key) {
                Ok(server) => Some(server),
                Err(e) => return self.refuse(&[e]),
            },
            _ => None,
        };
        // Runs on the blocking pool, inside the runtime: DNS lookups of new targets are
        // waited for here, never on a request.
        let previous = self.pipeline.live.load().upstreams.clone();
        let prepared = tokio::runtime::Handle::current().block_on(
            self.pipeline
                .forwarder
                .prepare(&config.upstreams, &previous),
        );
        let upstreams = match prepared {
            Ok(upstreams) => upstreams,
            Err(e) => return self.refuse(&[e]),
        };
        if let (Some(source), Some(server)) = (&self.tls, certificate) {
            source.replace(server);
        }
        for setting in self.fixed.changed(&FixedSettings::of(&config)) {
            tracing::warn!(
                setting,
                "config reload: this setting needs a restart; keeping the running value"
            );
        }
        self.cache.set_ttl(config.cache.ttl);
        // One pointer for the proxy and the admin API alike.
        self.pipeline.live.store(Arc::new(LiveConfig::new(
            &mut config,
            &self.metrics,
            upstreams,
        )));
        Forwarder::retire(&previous);
        self.metrics.config_reload(true);
        tracing::info!(path = %self.path.display(), "config reloaded");
        true
    }
}

/// Watches the config file and `triggers`, reloading on each change, until `shutdown`.
pub(crate) fn spawn(
    reloader: Arc<Reloader>,
    mut triggers: mpsc::Receiver<()>,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    // Watching starts before this returns, so no edit made after start-up is missed.
    let (changes_tx, mut changes) = mpsc::channel::<()>(16);
    let watcher = watch_file(&reloader.path, changes_tx);
    tokio::spawn(async move {
        // Kept alive for as long as the task runs; dropping it stops the watching.
        let _watcher = watcher;
        loop {
            tokio::select! {
                Some(()) = changes.recv() => {}
                Some(()) = triggers.recv() => {}
                _ = crate::server::stopped(&mut shutdown) => return,
            }
            tokio::time::sleep(SETTLE).await;
            while changes.try_recv().is_ok() || triggers.try_recv().is_ok() {}
            let reloader = reloader.clone();
            let _ = tokio::task::spawn_blocking(move || reloader.reload()).await;
        }
    })
}

/// Watches the file's folder, not the file: editors often replace the file (write a temporary
/// file, rename it over), which a watch on the old inode would miss.
fn watch_file(path: &Path, changes: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let config = path.to_path_buf();
    let handler = move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        // Resolved again on every event: the file may have become a symlink since start-up.
        let names = watched_names(&config);
        let concerns_config = event
            .paths
            .iter()
            .filter_map(|p| p.file_name())
            .any(|n| names.iter().any(|w| w == n));
        if concerns_config {
            let _ = changes.try_send(());
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the config file; reload with SIGHUP");
            return None;
        }
    };
    if let Err(e) = watcher.watch(&folder, RecursiveMode::NonRecursive) {
        tracing::warn!(error = %e, folder = %folder.display(), "cannot watch the config folder; reload with SIGHUP");
        return None;
    }
    Some(watcher)
}

/// The entries of the config's folder whose change can change what the config path reads: the
/// file itself and, when it is a relative symlink, the first entry its target goes through. In
/// a Kubernetes ConfigMap volume that is `..data` (`gateway.yaml -> ..data/gateway.yaml`): the
/// kubelet renames a new `..data` link over the old one and never touches `gateway.yaml`.
/// A link that leaves the folder (`../x`, absolute) is not followed: reload with SIGHUP.
fn watched_names(config: &Path) -> Vec<OsString> {
    let mut names: Vec<OsString> = config
        .file_name()
        .map(OsStr::to_owned)
        .into_iter()
        .collect();
    let Ok(target) = std::fs::read_link(config) else {
        return names;
    };
    if let Some(Component::Normal(first)) = target.components().next() {
        if target.is_relative() && !names.iter().any(|n| n == first) {
            names.push(first.to_owned());
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::watched_names;
    use std::os::unix::fs::symlink;

    #[test]
    fn a_plain_file_is_watched_by_its_name() {
        let dir = tempfile::tempdir().expect("dir");
        let config = dir.path().join("gateway.yaml");
        std::fs::write(&config, "").expect("write");
        assert_eq!(watched_names(&config), ["gateway.yaml"]);
    }

    #[test]
    fn a_configmap_link_is_watched_through_its_data_link() {
        let dir = tempfile::tempdir().expect("dir");
        let config = dir.path().join("gateway.yaml");
        symlink("..data/gateway.yaml", &config).expect("link");
        assert_eq!(watched_names(&config), ["gateway.yaml", "..data"]);
    }

    #[test]
    fn a_link_out_of_the_folder_adds_nothing() {
        let dir = tempfile::tempdir().expect("dir");
        let config = dir.path().join("gateway.yaml");
        symlink("../elsewhere/gateway.yaml", &config).expect("link");
        assert_eq!(watched_names(&config), ["gateway.yaml"]);
        std::fs::remove_file(&config).expect("remove");
        symlink("/etc/gateway.yaml", &config).expect("link");
        assert_eq!(watched_names(&config), ["gateway.yaml"]);
    }
}
