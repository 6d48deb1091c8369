//! The Helm chart (`helm/sluice`) and its rendering for `kubectl apply`
//! users (`deploy/sluice.yaml`), offline: `helm/tools/chart.py` lints it
//! strictly and renders it with Helm's own SDK (`helm-python-sdk`) and
//! checks every object against the Kubernetes schemas
//! (`kubernetes-validate`), with default and with non-default values.
//! `deploy/` must be what the chart renders; the ClusterRole must grant
//! exactly what the agent's code uses; the agent must accept the config
//! the chart gives it.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use sluice_agent::{config::FileConfig, datastore::kube_source};
use sluice_tests::{run_ok, unique, PRIVILEGED_ENV};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

/// `python3 helm/tools/chart.py`, or `None` (the test skips) where its
/// packages are not installed; under `cargo xtask test`, which installs
/// them, their absence fails the test.
fn chart_tool() -> Option<Command> {
    let present = Command::new("python3")
        .args(["-c", "import helm_python, kubernetes_validate"])
        .current_dir(std::env::temp_dir())
        .output()
        .is_ok_and(|o| o.status.success());
    if !present {
        if std::env::var_os(PRIVILEGED_ENV).is_some() {
            panic!("helm-python-sdk and kubernetes-validate are missing: cargo xtask bootstrap installs them");
        }
        eprintln!(
            "skipped: pip install -r helm/tools/requirements.txt (helm-python-sdk, kubernetes-validate)"
        );
        return None;
    }
    let mut cmd = Command::new("python3");
    cmd.arg(root().join("helm/tools/chart.py"))
        .current_dir(std::env::temp_dir());
    Some(cmd)
}

fn ok(mut cmd: Command, what: &str) -> String {
    run_ok(&mut cmd, what)
}

/// A temporary file path, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        Self(std::env::temp_dir().join(format!("sluice-chart-{}-{name}", unique("ch"))))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn documents(text: &str) -> Vec<serde_yaml::Value> {
    use serde::Deserialize as _;
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| serde_yaml::Value::deserialize(doc).expect("rendered YAML"))
        .filter(|doc| !doc.is_null())
        .collect()
}

fn object<'a>(docs: &'a [serde_yaml::Value], kind: &str) -> &'a serde_yaml::Value {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind} rendered"))
}

/// The agent's config file, as the chart's ConfigMap holds it, must be
/// one the agent accepts (it refuses unknown keys).
fn assert_agent_accepts_config(docs: &[serde_yaml::Value]) -> FileConfig {
    let text = object(docs, "ConfigMap")["data"]["config.yaml"]
        .as_str()
        .expect("config.yaml in the ConfigMap");
    serde_yaml::from_str(text).unwrap_or_else(|e| panic!("the agent refuses {text:?}: {e}"))
}

#[test]
fn the_chart_lints_renders_and_validates_with_default_and_other_values() {
    let chart = root().join("helm/sluice");
    let other = root().join("helm/tools/ci-values.yaml");
    for values in [None, Some(&other)] {
        let Some(mut lint) = chart_tool() else {
            return;
        };
        lint.arg("lint").arg(&chart);
        if let Some(values) = values {
            lint.arg("--values").arg(values);
        }
        ok(lint, "helm lint --strict");

        let out = Scratch::new("render.yaml");
        let mut render = chart_tool().expect("checked above");
        render
            .arg("render")
            .arg(&chart)
            .args(["--namespace", "kube-system", "--out"])
            .arg(&out.0);
        if let Some(values) = values {
            render.arg("--values").arg(values);
        }
        ok(render, "helm template");
        let mut validate = chart_tool().expect("checked above");
        validate.arg("validate").arg(&out.0);
        ok(validate, "kubernetes-validate");

        let docs = documents(&std::fs::read_to_string(&out.0).expect("rendered"));
        let config = assert_agent_accepts_config(&docs);
        if values.is_some() {
            assert_eq!(
                config.mtu,
                Some(1400),
                "the values reach the agent's config"
            );
            assert_eq!(config.kube_proxy_replacement, Some(false));
            assert_eq!(config.policy_audit_mode, Some(true));
            let flows = config.flows.as_ref().expect("flows");
            assert_eq!((flows.history, flows.rate), (Some(10000), Some(500)));
            assert!(docs.iter().any(|d| d["kind"] == "ServiceMonitor"));
        }
    }
}

#[test]
fn deploy_holds_the_charts_default_rendering() {
    let Some(mut render) = chart_tool() else {
        return;
    };
    let out = Scratch::new("deploy.yaml");
    render
        .arg("render")
        .arg(root().join("helm/sluice"))
        .args(["--header", "--namespace", "kube-system", "--out"])
        .arg(&out.0);
    ok(render, "helm template");
    let fresh = std::fs::read_to_string(&out.0).expect("rendered");
    let committed =
        std::fs::read_to_string(root().join("deploy/sluice.yaml")).expect("deploy/sluice.yaml");
    assert!(
        fresh == committed,
        "deploy/sluice.yaml is not what the chart renders: run `cargo xtask deploy`"
    );
}

/// Every (apiGroup, resource, verb) the ClusterRole grants, against what
/// the agent's watchers call: a difference either way fails.
#[test]
fn the_cluster_role_grants_exactly_what_the_agent_uses() {
    let text =
        std::fs::read_to_string(root().join("deploy/sluice.yaml")).expect("deploy/sluice.yaml");
    let docs = documents(&text);
    let role = object(&docs, "ClusterRole");
    let mut granted = BTreeSet::new();
    for rule in role["rules"].as_sequence().expect("rules") {
        let list = |key: &str| -> Vec<String> {
            rule[key]
                .as_sequence()
                .unwrap_or_else(|| panic!("rule without {key}: {rule:?}"))
                .iter()
                .map(|v| v.as_str().expect("a string").to_owned())
                .collect()
        };
        assert!(
            rule.get("resourceNames").is_none() && rule.get("nonResourceURLs").is_none(),
            "{rule:?}"
        );
        for group in list("apiGroups") {
            for resource in list("resources") {
                for verb in list("verbs") {
                    granted.insert((group.clone(), resource.clone(), verb));
                }
            }
        }
    }
    let used: BTreeSet<(String, String, String)> = kube_source::permissions()
        .into_iter()
        .map(|(g, r, v)| (g.to_owned(), r.to_owned(), v.to_owned()))
        .collect();
    assert_eq!(
        granted.difference(&used).collect::<Vec<_>>(),
        Vec::<&(String, String, String)>::new(),
        "granted but never used"
    );
    assert_eq!(
        used.difference(&granted).collect::<Vec<_>>(),
        Vec::<&(String, String, String)>::new(),
        "used but not granted"
    );
    // And the agent accepts the config the default rendering gives it.
    let config = assert_agent_accepts_config(&docs);
    assert_eq!(
        config.datastore,
        Some(sluice_agent::config::Datastore::Kubernetes { kubeconfig: None })
    );
    assert_eq!(config.pod_cidr, None, "the Node gives the pod CIDR");
}
