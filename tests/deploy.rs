//! The deploy kit and the container stay consistent with the code: their configs pass `check`,
//! the image's admin API is loopback-only, the compose file names files that exist and the
//! services the README promises. (promtool checks the Prometheus files in `.ci/run`.)
//!
//! The Kubernetes manifests (`deploy/kubernetes/`) are schema-checked in `.ci/run`
//! (kubernetes-validate); here is what a schema cannot see: the ConfigMap's config passes the
//! real binary's `check`, and the Deployment agrees with it (probes on the metrics listener's
//! paths and port, preStop and termination grace against `shutdown_grace`, the admin token's
//! variable from the Secret, the image's non-root user, the config mounted as a folder).

mod common;

use serde_yaml::Value;
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

/// The manifests in `deploy/kubernetes/`, one object per file, by kind.
struct Kube {
    objects: Vec<(String, Value)>,
}

impl Kube {
    fn load() -> Kube {
        let folder = repo("deploy/kubernetes");
        let mut objects = Vec::new();
        for name in manifest_files() {
            let text = std::fs::read_to_string(folder.join(&name)).expect("read manifest");
            let value: Value =
                serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            objects.push((name, value));
        }
        Kube { objects }
    }

    /// The one object of this kind.
    fn kind(&self, kind: &str) -> &Value {
        let mut found = self.objects.iter().filter(|(_, v)| v["kind"] == kind);
        let (_, object) = found.next().unwrap_or_else(|| panic!("no {kind}"));
        assert!(found.next().is_none(), "more than one {kind}");
        object
    }

    fn container(&self) -> &Value {
        let containers = self.kind("Deployment")["spec"]["template"]["spec"]["containers"]
            .as_sequence()
            .expect("containers");
        assert_eq!(containers.len(), 1, "one container");
        &containers[0]
    }

    /// The ConfigMap's `gateway.yaml`, as text.
    fn gateway_yaml(&self) -> &str {
        str_at(&self.kind("ConfigMap")["data"]["gateway.yaml"])
    }

    /// The ConfigMap's `gateway.yaml`, loaded as the gateway loads it.
    fn gateway_config(&self) -> scopegate::config::Config {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("gateway.yaml");
        std::fs::write(&path, self.gateway_yaml()).expect("write");
        scopegate::config::load(&path).unwrap_or_else(|e| panic!("ConfigMap:\n{e}"))
    }

    /// The container port with this name (probes and the Service name ports, not numbers).
    fn container_port(&self, name: &str) -> u16 {
        let ports = self.container()["ports"].as_sequence().expect("ports");
        let port = ports
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no container port named {name}"));
        u16::try_from(int_at(&port["containerPort"])).expect("port number")
    }
}

/// Every `.yaml` in `deploy/kubernetes/` but kustomize's own file.
fn manifest_files() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(repo("deploy/kubernetes"))
        .expect("deploy/kubernetes")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    names.sort();
    names
}

fn str_at(value: &Value) -> &str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {value:?}"))
}

fn int_at(value: &Value) -> u64 {
    value
        .as_u64()
        .unwrap_or_else(|| panic!("not a whole number: {value:?}"))
}

/// The uid in the Dockerfile's last `USER uid[:gid]` (the one the image runs as).
fn image_uid() -> u64 {
    let dockerfile = std::fs::read_to_string(repo("Dockerfile")).expect("Dockerfile");
    let user = dockerfile
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER line");
    user.split(':')
        .next()
        .unwrap_or_default()
        .trim()
        .parse()
        .expect("a numeric uid")
}

#[tokio::test]
async fn the_configmap_config_passes_the_binarys_check() {
    let kube = Kube::load();
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, kube.gateway_yaml()).expect("write");
    let run = common::process::scopegate(&["check", "-c", path.to_str().expect("UTF-8")]).await;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert_eq!(run.stdout.trim(), "ok");
}

#[test]
fn the_configmap_config_suits_a_cluster() {
    let config = Kube::load().gateway_config();
    for (what, listen) in [
        ("listen", config.listen),
        ("metrics.listen", config.metrics.listen),
    ] {
        assert!(
            listen.ip().is_unspecified(),
            "{what} {listen}: the pod's address must reach it"
        );
    }
    let redis = config
        .store
        .redis
        .as_deref()
        .expect("replicas share a Redis store");
    let host = redis
        .trim_start_matches("redis://")
        .split([':', '/', '@'])
        .next()
        .unwrap_or_default();
    assert_eq!(host, "redis", "the `redis` Service");
}

#[test]
fn probes_and_ports_match_the_config() {
    let kube = Kube::load();
    let config = kube.gateway_config();
    let container = kube.container();
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(str_at(&get["path"]), path, "{probe}");
        let port = kube.container_port(str_at(&get["port"]));
        assert_eq!(
            port,
            config.metrics.listen.port(),
            "{probe} on the metrics listener"
        );
    }
    assert_eq!(kube.container_port("http"), config.listen.port());
    assert_eq!(kube.container_port("admin"), config.admin.listen.port());

    // The Service carries the proxy and nothing else: the admin API is not exposed.
    let service_ports = kube.kind("Service")["spec"]["ports"]
        .as_sequence()
        .expect("ports");
    assert_eq!(service_ports.len(), 1, "{service_ports:?}");
    assert_eq!(str_at(&service_ports[0]["targetPort"]), "http");
}

#[test]
fn shutdown_timing_matches_shutdown_grace() {
    let kube = Kube::load();
    let config = kube.gateway_config();
    let command = kube.container()["lifecycle"]["preStop"]["exec"]["command"]
        .as_sequence()
        .expect("a preStop exec command");
    assert_eq!(command.len(), 2, "sleep SECONDS: {command:?}");
    assert_eq!(str_at(&command[0]), "sleep");
    let pre_stop: u64 = str_at(&command[1]).parse().expect("whole seconds");
    let grace = config.shutdown_grace.as_secs();
    assert_eq!(pre_stop, grace, "preStop waits as long as shutdown_grace");
    let termination = int_at(
        &kube.kind("Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"],
    );
    assert!(
        termination > pre_stop + grace,
        "terminationGracePeriodSeconds {termination} must exceed preStop {pre_stop} + shutdown_grace {grace}"
    );
}

#[test]
fn every_admin_token_comes_from_the_secret() {
    let kube = Kube::load();
    let config = kube.gateway_config();
    let secret = kube.kind("Secret");
    let env = kube.container()["env"].as_sequence().expect("env");
    assert!(!config.admin.tokens.is_empty());
    for identity in &config.admin.tokens {
        let var = env
            .iter()
            .find(|e| e["name"] == identity.env.as_str())
            .unwrap_or_else(|| panic!("no env {} for identity {}", identity.env, identity.name));
        let reference = &var["valueFrom"]["secretKeyRef"];
        assert_eq!(
            reference["name"], secret["metadata"]["name"],
            "{}",
            identity.env
        );
        let value = str_at(&secret["stringData"][str_at(&reference["key"])]);
        assert!(
            value.contains("REPLACE"),
            "a placeholder, marked as one: {value}"
        );
    }
}

#[test]
fn the_pod_runs_locked_down_as_the_images_user() {
    let kube = Kube::load();
    let pod = &kube.kind("Deployment")["spec"]["template"]["spec"];
    let security = &pod["securityContext"];
    assert_eq!(security["runAsNonRoot"], true);
    let uid = image_uid();
    assert_ne!(uid, 0, "the image's user is not root");
    assert_eq!(int_at(&security["runAsUser"]), uid, "the Dockerfile's USER");
    assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault");
    let container = kube.container();
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"][0], "ALL");
    for kind in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                container["resources"][kind][resource].as_str().is_some(),
                "resources.{kind}.{resource}"
            );
        }
    }
}

#[test]
fn the_config_is_mounted_as_a_folder_so_edits_reach_the_pod() {
    let kube = Kube::load();
    let container = kube.container();
    let args: Vec<&str> = container["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .map(str_at)
        .collect();
    let at = args.iter().position(|a| *a == "-c").expect("-c");
    let config = Path::new(args[at + 1]);
    let key = config.file_name().expect("file").to_string_lossy();
    assert!(
        !kube.kind("ConfigMap")["data"][key.as_ref()].is_null(),
        "ConfigMap key {key}"
    );

    // Management commands run with `kubectl exec` find the config by the CLI's default path.
    assert_eq!(key, "gateway.yaml", "the CLI's default -c");
    assert_eq!(
        Path::new(str_at(&container["workingDir"])),
        config.parent().expect("folder")
    );

    let mounts = container["volumeMounts"].as_sequence().expect("mounts");
    let mount = mounts
        .iter()
        .find(|m| Path::new(str_at(&m["mountPath"])) == config.parent().expect("folder"))
        .expect("the config's folder is a mount");
    // A subPath mount is never updated when the ConfigMap changes: no hot reload.
    assert!(mount["subPath"].is_null(), "no subPath");
    let volumes = kube.kind("Deployment")["spec"]["template"]["spec"]["volumes"]
        .as_sequence()
        .expect("volumes");
    let volume = volumes
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("volume");
    assert_eq!(
        volume["configMap"]["name"],
        kube.kind("ConfigMap")["metadata"]["name"]
    );
}

#[test]
fn the_objects_refer_to_each_other() {
    let kube = Kube::load();
    let deployment = kube.kind("Deployment");
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert_eq!(&deployment["spec"]["selector"]["matchLabels"], labels);
    assert_eq!(&kube.kind("Service")["spec"]["selector"], labels);
    assert_eq!(
        &kube.kind("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        labels
    );
    assert_eq!(
        &kube.kind("NetworkPolicy")["spec"]["podSelector"]["matchLabels"],
        labels
    );

    let hpa = kube.kind("HorizontalPodAutoscaler");
    assert_eq!(hpa["apiVersion"], "autoscaling/v2");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
    assert_eq!(
        hpa["spec"]["scaleTargetRef"]["name"],
        deployment["metadata"]["name"]
    );
    assert!(
        int_at(&hpa["spec"]["minReplicas"]) >= 2,
        "one replica can be drained"
    );
    assert!(
        deployment["spec"]["replicas"].is_null(),
        "the HPA owns the count; a fixed `replicas` would undo it on every apply"
    );
    // The admin port is admitted only together with a `from` clause.
    for rule in kube.kind("NetworkPolicy")["spec"]["ingress"]
        .as_sequence()
        .expect("ingress")
    {
        let ports = rule["ports"].as_sequence().expect("ports");
        if ports.iter().any(|p| p["port"] == "admin") {
            assert!(
                rule["from"].as_sequence().is_some_and(|f| !f.is_empty()),
                "{rule:?}"
            );
        }
    }
}

#[test]
fn the_kustomization_lists_every_manifest() {
    let text = std::fs::read_to_string(repo("deploy/kubernetes/kustomization.yaml"))
        .expect("kustomization.yaml");
    let kustomization: Value = serde_yaml::from_str(&text).expect("YAML");
    let mut listed: Vec<String> = kustomization["resources"]
        .as_sequence()
        .expect("resources")
        .iter()
        .map(|r| str_at(r).to_owned())
        .collect();
    listed.sort();
    assert_eq!(listed, manifest_files());
}
