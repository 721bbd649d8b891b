//! The Kubernetes deployment (`deploy/kubernetes`) and the container image as a cluster gets them:
//! every kustomization renders (kubectl's built-in kustomize) to resources the Kubernetes schemas
//! accept (kubernetes-validate, offline, strict), and the rendered resources keep what matters for
//! a gateway: non-root pods on read-only root filesystems, no secret value anywhere, probes on the
//! admin listener, replicas spread over nodes under a disruption budget, and a config that
//! `check-config` accepts as the pod will see it, files mounted where the config looks for them.
//!
//! The renderer and the validator are a test peer (`tests/peers/kubernetes`, installed by
//! `.ci/install-peers`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/kubernetes/.venv/bin");

/// Every kustomization an operator may apply.
const KUSTOMIZATIONS: [&str; 3] = [
    "deploy/kubernetes/base",
    "deploy/kubernetes/examples/production",
    "deploy/kubernetes/examples/development",
];
const PRODUCTION: &str = "deploy/kubernetes/examples/production";

/// The oldest Kubernetes the manifests are held to (the preStop `sleep` action is on by default
/// from 1.30), and the newest whose schemas the validator ships.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];

fn peer(name: &str) -> PathBuf {
    let path = Path::new(PEER).join(name);
    assert!(
        std::fs::metadata(&path).is_ok_and(|m| m.permissions().mode() & 0o111 != 0),
        "the Kubernetes manifest checkers are not installed: {} is missing. Run .ci/install-peers \
         (CI runs it before the tests; it builds tests/peers/kubernetes/.venv from \
         requirements.txt)",
        path.display()
    );
    path
}

fn run(command: &mut Command, input: Option<&str>) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.unwrap_or("").as_bytes()).unwrap();
    drop(stdin);
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// YAML documents as JSON values, through the peer's PyYAML.
fn yaml_documents(yaml: &str) -> Vec<Value> {
    let out = run(
        Command::new(peer("python")).args([
            "-c",
            "import json, sys, yaml\n\
             json.dump([d for d in yaml.safe_load_all(sys.stdin) if d is not None], sys.stdout)",
        ]),
        Some(yaml),
    );
    assert!(out.status.success(), "YAML did not parse: {}", text(&out.stderr));
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

/// One kustomization, rendered as `kubectl apply -k` would send it.
struct Rendered {
    dir: &'static str,
    yaml: String,
    resources: Vec<Value>,
}

impl Rendered {
    fn get(&self, kind: &str, name: &str) -> &Value {
        self.all(kind)
            .find(|r| r["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{}: no {kind} {name}", self.dir))
    }
    fn all(&self, kind: &str) -> impl Iterator<Item = &Value> {
        let kind = kind.to_string();
        self.resources.iter().filter(move |r| r["kind"] == kind.as_str())
    }
    /// A ConfigMap by the name the pods refer to it with (kustomize adds a hash to some).
    fn config_map(&self, name: &str) -> &Value {
        self.get("ConfigMap", name)
    }
    fn proxy(&self) -> &Value {
        self.get("Deployment", "portcullis")
    }
}

fn rendered() -> &'static [Rendered] {
    static RENDERED: OnceLock<Vec<Rendered>> = OnceLock::new();
    RENDERED.get_or_init(|| {
        KUSTOMIZATIONS
            .iter()
            .map(|dir| {
                let out = run(
                    Command::new(peer("kubectl")).args(["kustomize", &format!("{ROOT}/{dir}")]),
                    None,
                );
                assert!(
                    out.status.success(),
                    "{dir} does not render: {}",
                    text(&out.stderr)
                );
                let yaml = text(&out.stdout);
                let resources = yaml_documents(&yaml);
                Rendered { dir, yaml, resources }
            })
            .collect()
    })
}

fn production() -> &'static Rendered {
    rendered().iter().find(|r| r.dir == PRODUCTION).unwrap()
}

/// kubernetes-validate on a file of YAML documents, strict: a field the schema does not know is
/// an error, not a setting silently dropped.
fn validate(yaml: &str, version: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("manifests.yaml");
    std::fs::write(&file, yaml).unwrap();
    run(
        Command::new(peer("kubernetes-validate"))
            .args(["--strict", "--kubernetes-version", version])
            .arg(&file),
        None,
    )
}

fn pod_spec(workload: &Value) -> &Value {
    &workload["spec"]["template"]["spec"]
}

fn containers(workload: &Value) -> &Vec<Value> {
    pod_spec(workload)["containers"].as_array().unwrap()
}

fn proxy_container(rendered: &Rendered) -> &Value {
    containers(rendered.proxy())
        .iter()
        .find(|c| c["name"] == "portcullis")
        .unwrap()
}

/// The container port a probe or Service names (by name or number).
fn container_port(container: &Value, port: &Value) -> u64 {
    if let Some(number) = port.as_u64() {
        return number;
    }
    container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == *port)
        .unwrap_or_else(|| panic!("no container port named {port}"))["containerPort"]
        .as_u64()
        .unwrap()
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    let wanted = selector["matchLabels"].as_object().unwrap();
    !wanted.is_empty() && wanted.iter().all(|(k, v)| labels[k] == *v)
}

/// The proxy's config as its pod reads it: the file `serve --config` names, from the ConfigMap
/// mounted there.
fn pod_config(rendered: &Rendered) -> (String, toml::Table) {
    let container = proxy_container(rendered);
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let at = args.iter().position(|a| *a == "--config").unwrap();
    let file = Path::new(args[at + 1]);
    let (mount, volume) = mount_of(rendered, file);
    let name = file.strip_prefix(mount).unwrap().to_str().unwrap();
    let map = rendered.config_map(volume["configMap"]["name"].as_str().unwrap());
    let toml = map["data"][name].as_str().unwrap().to_string();
    let table = toml::from_str::<toml::Table>(&toml).unwrap();
    (toml, table)
}

/// The volume mount (its path, and the volume) a pod path lies in.
fn mount_of<'a>(rendered: &'a Rendered, path: &Path) -> (&'a str, &'a Value) {
    let container = proxy_container(rendered);
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| path.starts_with(m["mountPath"].as_str().unwrap()))
        .unwrap_or_else(|| {
            panic!(
                "{}: {} is on no volume of the proxy's pod",
                rendered.dir,
                path.display()
            )
        });
    let volume = pod_spec(rendered.proxy())["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    (mount["mountPath"].as_str().unwrap(), volume)
}

/// An absolute path with its `.` and `..` steps taken, without asking the file system (the pod's
/// paths are not on this machine).
fn lexical(path: &Path) -> String {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out.display().to_string()
}

/// Every string value in a TOML table that is an absolute path, with its key path.
fn absolute_paths(table: &toml::Table, prefix: &str, out: &mut Vec<(String, String)>) {
    for (key, value) in table {
        let path = format!("{prefix}{key}");
        match value {
            toml::Value::String(s) if s.starts_with('/') => out.push((path, s.clone())),
            toml::Value::Table(t) => absolute_paths(t, &format!("{path}."), out),
            toml::Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let toml::Value::Table(t) = item {
                        absolute_paths(t, &format!("{path}[{i}]."), out);
                    }
                }
            }
            _ => {}
        }
    }
}

fn toml_str<'a>(table: &'a toml::Table, dotted: &str) -> &'a str {
    let mut value: Option<&toml::Value> = None;
    let mut current = table;
    for part in dotted.split('.') {
        value = current.get(part);
        if let Some(toml::Value::Table(t)) = value {
            current = t;
        }
    }
    value
        .and_then(|v| v.as_str())
        .unwrap_or_else(|| panic!("no {dotted} in the config"))
}

fn port_of(listen: &str) -> u64 {
    listen.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn every_kustomization_renders_to_resources_that_the_kubernetes_schemas_accept() {
    for rendered in rendered() {
        assert!(
            rendered.resources.len() >= 7,
            "{}: only {} resources",
            rendered.dir,
            rendered.resources.len()
        );
        for version in KUBERNETES_VERSIONS {
            let out = validate(&rendered.yaml, version);
            let report = format!("{}{}", text(&out.stdout), text(&out.stderr));
            assert!(
                out.status.success(),
                "{} against Kubernetes {version}:\n{report}",
                rendered.dir
            );
            // Each resource was checked against a schema, none skipped for want of one.
            assert_eq!(
                report.matches(" passed for resource ").count(),
                rendered.resources.len(),
                "{} against Kubernetes {version}:\n{report}",
                rendered.dir
            );
        }
    }
}

#[test]
fn a_misspelt_or_mistyped_field_is_refused_by_the_validator() {
    let good = &production().yaml;
    for (bad, field) in [
        (
            good.replace("readOnlyRootFilesystem: true", "readOnlyRootFileSystem: true"),
            "readOnlyRootFileSystem",
        ),
        (good.replace("replicas: 3", "replicas: three"), "spec.replicas"),
    ] {
        assert_ne!(&bad, good, "the mistake was not made");
        let out = validate(&bad, KUBERNETES_VERSIONS[0]);
        let report = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(!out.status.success(), "accepted:\n{report}");
        assert!(report.contains(field), "{field} is not named:\n{report}");
    }
}

#[test]
fn every_file_under_deploy_kubernetes_is_used_by_a_kustomization() {
    let base = Path::new(ROOT).join("deploy/kubernetes");
    let mut files = BTreeSet::new();
    let mut dirs = vec![base.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.insert(path);
            }
        }
    }
    let mut used = BTreeSet::new();
    for dir in KUSTOMIZATIONS {
        let dir = Path::new(ROOT).join(dir);
        let file = dir.join("kustomization.yaml");
        used.insert(file.clone());
        let k = &yaml_documents(&std::fs::read_to_string(&file).unwrap())[0];
        let empty = vec![];
        let named = k["resources"].as_array().unwrap_or(&empty).iter();
        let patches = k["patches"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .map(|p| &p["path"]);
        let generated = k["configMapGenerator"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .flat_map(|g| g["files"].as_array().unwrap().iter());
        for name in named.chain(patches).chain(generated).filter_map(Value::as_str) {
            // `key=file` names the key a file is stored under.
            let name = name.rsplit('=').next().unwrap();
            used.insert(dir.join(name));
        }
    }
    let unused: Vec<_> = files
        .iter()
        .filter(|f| !used.contains(*f) && f.file_name().unwrap() != "README.md")
        .collect();
    assert!(unused.is_empty(), "files no kustomization uses: {unused:#?}");
}

#[test]
fn every_pod_runs_as_a_non_root_user_on_a_read_only_root_filesystem_without_privileges() {
    for rendered in rendered() {
        for workload in rendered.all("Deployment") {
            let name = format!("{}: {}", rendered.dir, workload["metadata"]["name"]);
            let pod = pod_spec(workload);
            assert_eq!(pod["automountServiceAccountToken"], false, "{name}");
            assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
            assert!(
                pod["securityContext"]["runAsUser"].as_u64().unwrap() > 0,
                "{name}"
            );
            assert_eq!(
                pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
                "{name}"
            );
            for container in containers(workload) {
                let security = &container["securityContext"];
                assert_eq!(security["runAsNonRoot"], true, "{name}");
                assert_eq!(security["readOnlyRootFilesystem"], true, "{name}");
                assert_eq!(security["allowPrivilegeEscalation"], false, "{name}");
                assert_eq!(
                    security["capabilities"]["drop"],
                    serde_json::json!(["ALL"]),
                    "{name}"
                );
                assert!(security.get("privileged").is_none_or(|p| p == false), "{name}");
                assert!(
                    container["resources"]["limits"]["memory"].is_string(),
                    "{name}: no memory limit"
                );
            }
        }
    }
}

#[test]
fn no_manifest_holds_a_secret_value_only_references_to_secrets_the_docs_say_how_to_create() {
    let docs = std::fs::read_to_string(Path::new(ROOT).join("docs/deployment.md")).unwrap();
    for rendered in rendered() {
        let dir = rendered.dir;
        assert_eq!(
            rendered.all("Secret").count(),
            0,
            "{dir}: a Secret in the manifests"
        );
        assert!(!rendered.yaml.contains("PRIVATE KEY"), "{dir}: a private key");
        let kustomization =
            std::fs::read_to_string(Path::new(ROOT).join(dir).join("kustomization.yaml")).unwrap();
        assert!(
            !kustomization.contains("secretGenerator"),
            "{dir}: a secretGenerator"
        );

        for workload in rendered.all("Deployment") {
            for container in containers(workload) {
                for env in container["env"].as_array().into_iter().flatten() {
                    let name = env["name"].as_str().unwrap().to_ascii_lowercase();
                    let sensitive = ["secret", "password", "token", "key"]
                        .iter()
                        .any(|w| name.contains(w));
                    assert!(
                        !sensitive || env.get("value").is_none(),
                        "{dir}: {name} has a value written in the manifest"
                    );
                }
            }
            // Each Secret key a pod needs is one that docs/deployment.md tells the operator to
            // put into the Secret.
            for volume in pod_spec(workload)["volumes"].as_array().unwrap() {
                let Some(secret) = volume.get("secret") else {
                    continue;
                };
                for item in secret["items"].as_array().unwrap() {
                    let key = item["key"].as_str().unwrap();
                    assert!(
                        docs.contains(&format!("{key}=")),
                        "{dir}: docs/deployment.md does not say how to put {key} into the \
                         Secret {}",
                        secret["secretName"]
                    );
                }
            }
        }

        // The config names where each secret is (`*_env`, `*_file`), never the secret itself.
        let (_, config) = pod_config(rendered);
        fn secrets_by_reference(table: &toml::Table, at: &str) {
            for (key, value) in table {
                let sensitive = ["secret", "password", "token"].iter().any(|w| key.contains(w));
                assert!(
                    !sensitive || key.ends_with("_env") || key.ends_with("_file"),
                    "{at}{key} holds a secret in the config"
                );
                if let toml::Value::Table(t) = value {
                    secrets_by_reference(t, &format!("{at}{key}."));
                }
                for item in value.as_array().into_iter().flatten() {
                    if let toml::Value::Table(t) = item {
                        secrets_by_reference(t, &format!("{at}{key}[]."));
                    }
                }
            }
        }
        secrets_by_reference(&config, "");
    }
}

#[test]
fn the_probes_ask_the_admin_listener_and_every_listener_is_on_all_interfaces() {
    for rendered in rendered() {
        let dir = rendered.dir;
        let container = proxy_container(rendered);
        let (_, config) = pod_config(rendered);
        let admin = toml_str(&config, "admin.listen");
        let http = toml_str(&config, "server.http");
        assert!(admin.starts_with("0.0.0.0:"), "{dir}: admin.listen = {admin}");
        assert!(http.starts_with("0.0.0.0:"), "{dir}: server.http = {http}");

        for (probe, path) in [
            ("startupProbe", "/readyz"),
            ("livenessProbe", "/healthz"),
            ("readinessProbe", "/readyz"),
        ] {
            let get = &container[probe]["httpGet"];
            assert_eq!(get["path"], path, "{dir}: {probe}");
            assert_eq!(
                container_port(container, &get["port"]),
                port_of(admin),
                "{dir}: {probe} is not on the admin listener"
            );
        }

        // The Service sends requests to the proxy listener, and publishes nothing else.
        let service = rendered.get("Service", "portcullis");
        assert!(labels_match(
            &serde_json::json!({ "matchLabels": service["spec"]["selector"] }),
            &rendered.proxy()["spec"]["template"]["metadata"]["labels"]
        ));
        let ports = service["spec"]["ports"].as_array().unwrap();
        assert_eq!(ports.len(), 1, "{dir}: the Service publishes more than the proxy");
        assert_eq!(
            container_port(container, &ports[0]["targetPort"]),
            port_of(http),
            "{dir}"
        );
    }
}

#[test]
fn production_runs_at_least_two_replicas_on_separate_nodes_under_a_disruption_budget() {
    for rendered in rendered() {
        let dir = rendered.dir;
        let proxy = rendered.proxy();
        let labels = &proxy["spec"]["template"]["metadata"]["labels"];
        let replicas = proxy["spec"]["replicas"].as_u64().unwrap();
        let budget = rendered.get("PodDisruptionBudget", "portcullis");
        assert!(labels_match(&budget["spec"]["selector"], labels), "{dir}");
        // A drain may evict one replica at a time, never the last one.
        assert_eq!(budget["spec"]["maxUnavailable"], 1, "{dir}");
        assert!(labels_match(&proxy["spec"]["selector"], labels), "{dir}");
        if dir == PRODUCTION {
            assert!(replicas >= 2, "{dir}: {replicas} replica");
            let terms = pod_spec(proxy)["affinity"]["podAntiAffinity"]
                ["requiredDuringSchedulingIgnoredDuringExecution"]
                .as_array()
                .unwrap();
            assert!(
                terms.iter().any(|t| t["topologyKey"] == "kubernetes.io/hostname"
                    && labels_match(&t["labelSelector"], labels)),
                "{dir}: replicas may share a node"
            );
            assert_eq!(proxy["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
        }
    }
}

#[test]
fn the_network_policy_covers_the_proxy_pods_both_ways_and_admits_only_its_two_ports() {
    for rendered in rendered() {
        let dir = rendered.dir;
        let policy = rendered.get("NetworkPolicy", "portcullis");
        let labels = &rendered.proxy()["spec"]["template"]["metadata"]["labels"];
        assert!(labels_match(&policy["spec"]["podSelector"], labels), "{dir}");
        assert_eq!(
            policy["spec"]["policyTypes"],
            serde_json::json!(["Ingress", "Egress"])
        );
        let container = proxy_container(rendered);
        let (_, config) = pod_config(rendered);
        let listeners = [
            port_of(toml_str(&config, "server.http")),
            port_of(toml_str(&config, "admin.listen")),
        ];
        for rule in policy["spec"]["ingress"].as_array().unwrap() {
            assert!(
                !rule["from"].as_array().unwrap().is_empty(),
                "{dir}: open to anyone"
            );
            for port in rule["ports"].as_array().unwrap() {
                let port = container_port(container, &port["port"]);
                assert!(listeners.contains(&port), "{dir}: admits port {port}");
            }
        }
    }
}

/// Lays out the files of the proxy's pod that volumes provide, under `root`: ConfigMaps as the
/// kubelet writes them (items where listed), a placeholder for each Secret item, empty dirs.
fn lay_out_pod_volumes(rendered: &Rendered, root: &Path) {
    let container = proxy_container(rendered);
    for mount in container["volumeMounts"].as_array().unwrap() {
        let at = root.join(mount["mountPath"].as_str().unwrap().trim_start_matches('/'));
        std::fs::create_dir_all(&at).unwrap();
        let volume = pod_spec(rendered.proxy())["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        if let Some(source) = volume.get("configMap") {
            let data = rendered.config_map(source["name"].as_str().unwrap())["data"]
                .as_object()
                .unwrap();
            let files: Vec<(String, String)> = match source["items"].as_array() {
                // Items list what the pod gets: a key left off them (a decision table added to
                // the ConfigMap only) would silently never reach the proxy.
                Some(items) => {
                    let listed: BTreeSet<&str> = items.iter().map(|i| i["key"].as_str().unwrap()).collect();
                    let keys: BTreeSet<&str> = data.keys().map(String::as_str).collect();
                    assert_eq!(listed, keys, "{}: keys not mounted", rendered.dir);
                    items
                        .iter()
                        .map(|i| {
                            let key = i["key"].as_str().unwrap();
                            let value = data.get(key).unwrap_or_else(|| {
                                panic!("{}: the ConfigMap has no key {key}", rendered.dir)
                            });
                            (i["path"].as_str().unwrap().into(), value.as_str().unwrap().into())
                        })
                        .collect()
                }
                None => data
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().into()))
                    .collect(),
            };
            for (path, content) in files {
                let file = at.join(path);
                std::fs::create_dir_all(file.parent().unwrap()).unwrap();
                std::fs::write(file, content).unwrap();
            }
        } else if let Some(source) = volume.get("secret") {
            for item in source["items"].as_array().unwrap() {
                std::fs::write(at.join(item["path"].as_str().unwrap()), "placeholder").unwrap();
            }
        }
    }
}

#[test]
fn the_config_each_example_mounts_passes_check_config_as_the_pod_sees_it() {
    for rendered in rendered() {
        let dir = rendered.dir;
        let root = tempfile::tempdir().unwrap();
        lay_out_pod_volumes(rendered, root.path());
        let container = proxy_container(rendered);
        let args: Vec<&str> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(&args[..2], ["serve", "--config"], "{dir}");
        let in_pod = |path: &str| root.path().join(path.trim_start_matches('/'));
        // Relative paths are taken from the config's directory, whatever the working directory.
        // Offline: the config names its secrets by their absolute paths in the pod, which are not
        // on this machine; that each is a key of a Secret volume is checked below.
        let out = Command::new(support::binary())
            .args(["check-config", "--offline", "--config"])
            .arg(in_pod(args[2]))
            .current_dir(root.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{dir}: check-config refused the pod's config (policy included):\n{}{}",
            text(&out.stdout),
            text(&out.stderr)
        );

        // Every file or directory the config names is on a volume of the pod: the root
        // filesystem is read-only and holds none of them.
        let (_, config) = pod_config(rendered);
        let mut paths = Vec::new();
        absolute_paths(&config, "", &mut paths);
        let policy_dir = Path::new(args[2])
            .parent()
            .unwrap()
            .join(config["policy"]["dir"].as_str().unwrap());
        paths.push(("policy.dir".into(), lexical(&policy_dir)));
        for (key, path) in &paths {
            let (mount, volume) = mount_of(rendered, Path::new(path));
            if key.ends_with("_file") {
                let name = Path::new(path).strip_prefix(mount).unwrap();
                let items = volume["secret"]["items"].as_array();
                assert!(
                    items.is_some_and(|items| items.iter().any(|i| i["path"] == name.to_str().unwrap())),
                    "{dir}: {key} = {path} is not a key of a Secret volume"
                );
            }
        }
        // The audit spool is a writable volume of its own.
        if let Some(spool) = config.get("audit").and_then(|a| a.get("spool")) {
            let spool = spool["dir"].as_str().unwrap();
            let (mount, volume) = mount_of(rendered, Path::new(spool));
            assert_eq!(mount, spool, "{dir}: the spool shares a volume");
            assert!(volume.get("emptyDir").is_some() || volume.get("persistentVolumeClaim").is_some());
            let size = volume["emptyDir"]["sizeLimit"].as_str().unwrap_or("");
            assert!(!size.is_empty(), "{dir}: the spool volume has no sizeLimit");
        }
    }
}

#[test]
fn the_container_image_listens_on_all_interfaces_with_a_default_config_that_loads() {
    let dockerfile = std::fs::read_to_string(Path::new(ROOT).join("Dockerfile")).unwrap();
    let lines: Vec<&str> = dockerfile.lines().collect();
    let copy_to = |dest: &str| {
        lines
            .iter()
            .find_map(|l| {
                let words: Vec<&str> = l.split_whitespace().collect();
                (words.first() == Some(&"COPY") && words.last() == Some(&dest))
                    .then(|| words[words.len() - 2])
            })
            .unwrap_or_else(|| panic!("the Dockerfile copies nothing to {dest}"))
    };
    let config = copy_to("/etc/portcullis/portcullis.toml");
    let policies = copy_to("/etc/portcullis/policies");
    assert_eq!(policies, "policies");
    assert!(lines.contains(&"WORKDIR /etc/portcullis"));
    assert!(lines.contains(&r#"CMD ["serve", "--config", "/etc/portcullis/portcullis.toml"]"#));
    // The two where the image has them: the config finds the policy beside it.
    let image = tempfile::tempdir().unwrap();
    let etc = image.path().join("etc/portcullis");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::copy(Path::new(ROOT).join(config), etc.join("portcullis.toml")).unwrap();
    std::os::unix::fs::symlink(Path::new(ROOT).join(policies), etc.join("policies")).unwrap();
    let out = Command::new(support::binary())
        .args(["check-config", "--config"])
        .arg(etc.join("portcullis.toml"))
        .current_dir(image.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{config}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    let table =
        toml::from_str::<toml::Table>(&std::fs::read_to_string(Path::new(ROOT).join(config)).unwrap())
            .unwrap();
    let admin = toml_str(&table, "admin.listen");
    assert!(toml_str(&table, "server.http").starts_with("0.0.0.0:"));
    assert!(admin.starts_with("0.0.0.0:"));
    assert!(
        dockerfile.contains(&format!("http://127.0.0.1:{}/healthz", port_of(admin))),
        "the HEALTHCHECK does not probe the admin listener"
    );

    // The spool directory is in the image, owned by the non-root user the image runs as, and a
    // volume starts from it.
    assert!(lines.contains(&"USER nonroot:nonroot"));
    assert!(dockerfile.contains("install -d -m 0700 /out/var/lib/portcullis/audit"));
    assert!(lines.contains(&"COPY --from=build --chown=65532:65532 /out/var/lib/ /var/lib/"));
    assert!(lines.contains(&r#"VOLUME ["/var/lib/portcullis/audit"]"#));

    // Everything the image copies from the build context passes the .dockerignore, which
    // lets nothing else in.
    let ignore = std::fs::read_to_string(Path::new(ROOT).join(".dockerignore")).unwrap();
    let allowed: Vec<&str> = ignore
        .lines()
        .filter_map(|l| l.strip_prefix('!'))
        .map(|l| l.trim_end_matches('/'))
        .collect();
    assert!(
        ignore.lines().any(|l| l == "*"),
        ".dockerignore must start from nothing"
    );
    for line in &lines {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&"COPY") && !words.iter().any(|w| w.starts_with("--from")) {
            for source in &words[1..words.len() - 1] {
                let source = source.trim_end_matches('/');
                assert!(
                    allowed.contains(&source),
                    "{source} is left out of the build context"
                );
            }
        }
    }
}
