//! The deploy kit and the container stay consistent with the code: their configs pass `check`,
//! the image's admin API is loopback-only, the compose file names files that exist and the
//! services the README promises. (promtool checks the Prometheus files in `.ci/run`.)

use std::path::{Path, PathBuf};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn load(path: &str) -> scopegate::config::Config {
    scopegate::config::load(&repo(path)).unwrap_or_else(|e| panic!("{path}:\n{e}"))
}

#[test]
fn the_image_config_keeps_the_admin_api_on_loopback() {
    let config = load("deploy/docker/gateway.yaml");
    assert!(
        config.admin.listen.ip().is_loopback(),
        "{}",
        config.admin.listen
    );
    assert!(
        config.metrics.listen.ip().is_unspecified(),
        "Prometheus and HEALTHCHECK reach it"
    );
    assert_eq!(config.store.path, Path::new("/var/lib/scopegate/data"));
    assert!(
        config.shutdown_grace < std::time::Duration::from_secs(10),
        "Docker's stop timeout"
    );

    let dockerfile = std::fs::read_to_string(repo("Dockerfile")).expect("Dockerfile");
    for needed in [
        "COPY deploy/docker/gateway.yaml /etc/scopegate/gateway.yaml",
        r#"VOLUME ["/var/lib/scopegate/data"]"#,
        r#"CMD ["scopegate", "health", "-c", "/etc/scopegate/gateway.yaml"]"#,
        "STOPSIGNAL SIGTERM",
        "USER 10001",
    ] {
        assert!(dockerfile.contains(needed), "Dockerfile lacks {needed:?}");
    }
    let ignore = std::fs::read_to_string(repo(".dockerignore")).expect(".dockerignore");
    assert_eq!(
        ignore.lines().find(|l| !l.starts_with('#')),
        Some("*"),
        "an allowlist"
    );
}

#[test]
fn the_compose_kit_is_complete() {
    let config = load("deploy/compose/gateway.yaml");
    assert!(config.store.redis.is_some(), "the two gateways share Redis");
    assert!(config.admin.listen.ip().is_loopback());

    let text = std::fs::read_to_string(repo("deploy/compose.yaml")).expect("compose.yaml");
    let compose: serde_yaml::Value = serde_yaml::from_str(&text).expect("compose YAML");
    let services = compose["services"].as_mapping().expect("services");
    for name in ["gateway-1", "gateway-2", "redis", "prometheus", "grafana"] {
        assert!(services.contains_key(name), "no service {name}");
    }
    // Every file the kit mounts exists (paths relative to deploy/).
    let mounts = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- ./"))
        .map(|m| m.split(':').next().unwrap_or_default().to_owned());
    let mut count = 0;
    for mount in mounts {
        assert!(
            repo("deploy").join(&mount).exists(),
            "deploy/{mount} is missing"
        );
        count += 1;
    }
    assert!(count >= 5, "{count} mounts");
}
