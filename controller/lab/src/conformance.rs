//! `sluice lab conformance DIR`: runs NetworkPolicy conformance cases
//! (format: `/work/shared/conformance/FORMAT.md`) on a two-node lab with
//! the upstream model's pods.
//!
//! Every case gets a fresh lab. Bringing one up with the nine model pods
//! takes about a second, and it is the only reset that cannot leak state
//! between cases (a policy an agent failed to forget would otherwise fail,
//! or worse pass, the next case). Before the first step the runner waits
//! until every pod reaches every other: until then a pair may be blocked
//! only because an agent has not yet learnt about a remote pod, and that
//! would look like enforcement.
//!
//! Agents apply policy asynchronously, so each step's probes are repeated
//! until they match or [`Options::wait`] passes, and the last observation
//! is judged; upstream instead probes a second time right away. Pods
//! reaching themselves are reported but not judged, as upstream does.

pub mod case;
pub mod placeholders;
pub mod verdict;

use std::{
    collections::BTreeMap,
    io,
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use nix::{
    errno::Errno,
    sys::socket::{socket, AddressFamily, SockFlag, SockProtocol, SockType},
};

use self::{
    case::{Case, Probe, Protocol, Step},
    placeholders::substitute_value,
    verdict::{compare, CaseReport, Comparison, Outcome, Summary},
};
use super::{
    cluster::{Lab, LabConfig, LabError, UpOptions},
    matrix::{self, Check, Peer, TruthTable},
    model, teardown,
};
use sluice_agent::config::Routing;

/// How long a step's probes may take to match by default.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(10);
/// How long a fresh lab may take until every pod reaches every other;
/// normally the first round already does.
const BASELINE_WAIT: Duration = Duration::from_secs(20);
/// Between rounds of probes that did not match yet.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub routing: Routing,
    /// Run only cases whose file name or name contains this.
    pub filter: Option<String>,
    /// Leave the last case's lab up.
    pub keep: bool,
    /// How long a step's probes may take to match.
    pub wait: Duration,
    /// Of each single probe (upstream: 1 s).
    pub probe_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            routing: Routing::Tunnel,
            filter: None,
            keep: false,
            wait: DEFAULT_WAIT,
            probe_timeout: matrix::DEFAULT_TIMEOUT,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConformanceError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no case files (*.yaml) in {0}")]
    NoCases(PathBuf),
    #[error("no case in {dir} matches {filter:?}")]
    NoMatch { dir: PathBuf, filter: String },
    #[error(transparent)]
    Lab(#[from] LabError),
}

/// A case file as found in the directory.
#[derive(Debug, Clone)]
pub struct CaseEntry {
    pub file: String,
    /// A file that does not parse fails on its own; the run goes on.
    pub case: Result<Case, String>,
}

/// The case files of `dir` (`*.yaml`, `*.yml`) in name order, those whose
/// file name or case name contains `filter`.
pub fn load(dir: &Path, filter: Option<&str>) -> Result<Vec<CaseEntry>, ConformanceError> {
    let read_err = |path: &Path| {
        let path = path.to_owned();
        move |source| ConformanceError::Read { path, source }
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read_err(dir))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(ConformanceError::NoCases(dir.to_owned()));
    }
    let mut entries = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(read_err(&path))?;
        let file = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let case = case::parse(&text).map_err(|e| e.to_string());
        let wanted = filter
            .is_none_or(|f| file.contains(f) || case.as_ref().is_ok_and(|c| c.name.contains(f)));
        if wanted {
            entries.push(CaseEntry { file, case });
        }
    }
    match filter {
        Some(filter) if entries.is_empty() => Err(ConformanceError::NoMatch {
            dir: dir.to_owned(),
            filter: filter.to_owned(),
        }),
        _ => Ok(entries),
    }
}

/// The lab the runner uses: beside the user's (`<name>-conf`), so a run
/// never touches a lab someone is working with.
pub fn lab_config(base: &LabConfig) -> Result<LabConfig, LabError> {
    let name = format!("{}-conf", base.name);
    LabConfig::new(base.dir.with_file_name(&name), &name, &base.bin_dir)
}

/// Why SCTP probes are skipped. The lab's pod servers speak TCP and UDP
/// only, so they are skipped everywhere; the reason says whether the
/// kernel could do SCTP at all.
pub fn sctp_skip_reason() -> String {
    match socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::Sctp,
    ) {
        Ok(_fd) => "the lab's pods do not serve SCTP".into(),
        Err(e @ (Errno::EPROTONOSUPPORT | Errno::ESOCKTNOSUPPORT)) => format!(
            "this kernel has no SCTP (socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP): {})",
            e.desc()
        ),
        Err(e) => format!("cannot open an SCTP socket: {}", e.desc()),
    }
}

/// What a caller checks once a case's last step matched, with its lab
/// still up: the step and each of its probes with the table observed.
/// Whatever it returns fails the case, one line each.
pub type Inspect<'a> = dyn FnMut(&Lab, &Step, &[(Check, TruthTable)]) -> Vec<String> + 'a;

/// Runs the cases of `dir`, handing each finished case to `on_case`.
/// Errors are for what stops the whole run (no cases, a lab that does not
/// come up); everything about one case is in its report.
pub fn run(
    base: &LabConfig,
    dir: &Path,
    options: &Options,
    on_case: impl FnMut(&CaseReport),
) -> Result<Summary, ConformanceError> {
    run_inspecting(base, dir, options, &mut |_, _, _| Vec::new(), on_case)
}

/// [`run`], handing each case's lab to `inspect` after its last step
/// matched (the tests of `sluice lab explain` compare its answers with the
/// probes there).
pub fn run_inspecting(
    base: &LabConfig,
    dir: &Path,
    options: &Options,
    inspect: &mut Inspect,
    mut on_case: impl FnMut(&CaseReport),
) -> Result<Summary, ConformanceError> {
    let started = Instant::now();
    let entries = load(dir, options.filter.as_deref())?;
    let config = lab_config(base)?;
    let sctp = sctp_skip_reason();
    // What a crashed earlier run left.
    teardown::down(&config)?;
    let mut summary = Summary::default();
    for entry in &entries {
        let result = run_entry(&config, options, entry, &sctp, inspect);
        // With --keep, the next case's `down` removes the previous lab,
        // so the last case's (or a broken one's) stays up.
        if !options.keep {
            teardown::down(&config)?;
        }
        let report = result?;
        summary.add(&report);
        on_case(&report);
    }
    summary.elapsed = started.elapsed();
    Ok(summary)
}

fn run_entry(
    config: &LabConfig,
    options: &Options,
    entry: &CaseEntry,
    sctp: &str,
    inspect: &mut Inspect,
) -> Result<CaseReport, ConformanceError> {
    let started = Instant::now();
    let mut report = CaseReport {
        file: entry.file.clone(),
        name: String::new(),
        outcome: Outcome::Pass,
        notes: Vec::new(),
        elapsed: Duration::ZERO,
    };
    match &entry.case {
        Err(e) => report.outcome = Outcome::Fail(vec![e.clone()]),
        Ok(case) => {
            report.name = case.name.clone();
            let mut probes = case.probes().peekable();
            let all_sctp = probes.peek().is_some() && probes.all(|p| check_of(p).is_none());
            report.outcome = if all_sctp {
                Outcome::Skip(format!("every probe is SCTP, skipped: {sctp}"))
            } else {
                run_case(config, options, case, sctp, &mut report.notes, inspect)?
            };
        }
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

/// The lab's check for a probe; `None` for what the lab cannot probe.
fn check_of(probe: &Probe) -> Option<Check> {
    match probe.protocol {
        Protocol::Tcp => Some(Check::tcp(probe.port)),
        Protocol::Udp => Some(Check::udp(probe.port)),
        Protocol::Sctp => None,
    }
}

fn run_case(
    config: &LabConfig,
    options: &Options,
    case: &Case,
    sctp: &str,
    notes: &mut Vec<String>,
    inspect: &mut Inspect,
) -> Result<Outcome, ConformanceError> {
    teardown::down(config)?;
    let up = UpOptions {
        nodes: 2,
        routing: options.routing,
        ..UpOptions::default()
    };
    let mut lab = Lab::up(config.clone(), &up)?;
    model::create(&mut lab)?;
    let peers = lab.peers();
    let baseline = converge(
        &peers,
        &all_reachable(&peers),
        BASELINE_WAIT,
        options.probe_timeout,
    );
    if !baseline.matches() {
        let mut lines = vec![format!(
            "before any policy, pods could not reach each other after {:.1} s (a dataplane problem, not a policy one):",
            baseline.elapsed.as_secs_f64()
        )];
        lines.extend(baseline.cells());
        return Ok(Outcome::Fail(lines));
    }
    let ips: BTreeMap<String, IpAddr> = lab
        .state()
        .pods
        .iter()
        .map(|p| (p.pod_name().to_string(), p.ip))
        .collect();
    if let Err(e) = label(&mut lab, &case.namespace_labels, &case.pod_labels) {
        return Ok(Outcome::Fail(vec![format!("before step 1: {e}")]));
    }
    for (i, step) in case.steps.iter().enumerate() {
        let at = format!("step {} of {}", i + 1, case.steps.len());
        if let Err(e) = change(&mut lab, i + 1, step, &ips) {
            return Ok(Outcome::Fail(vec![format!("{at}: {e}")]));
        }
        let (probes, skipped): (Vec<&Probe>, Vec<&Probe>) =
            step.probes.iter().partition(|p| check_of(p).is_some());
        for probe in skipped {
            notes.push(format!("{at}: {} skipped: {sctp}", probe.label()));
        }
        if probes.is_empty() {
            continue;
        }
        let targets: Vec<Target> = probes
            .iter()
            .filter_map(|p| {
                Some(Target {
                    label: p.label(),
                    check: check_of(p)?,
                    expect: p.expect.clone(),
                })
            })
            .collect();
        let result = converge(&peers, &targets, options.wait, options.probe_timeout);
        notes.extend(
            result
                .comparisons
                .iter()
                .flat_map(|c| &c.diagonal)
                .map(|cell| format!("{at}: diagonal, not judged: {cell}")),
        );
        if !result.matches() {
            let cells = result.cells();
            let mut lines = vec![format!(
                "{at}: {} cell(s) differ after {} round(s) of probes in {:.1} s:",
                cells.len(),
                result.rounds,
                result.elapsed.as_secs_f64()
            )];
            lines.extend(cells);
            return Ok(Outcome::Fail(lines));
        }
        if i + 1 == case.steps.len() {
            let observed: Vec<(Check, TruthTable)> = targets
                .iter()
                .map(|t| t.check)
                .zip(result.observed)
                .collect();
            let problems = inspect(&lab, step, &observed);
            if !problems.is_empty() {
                let mut lines = vec![format!(
                    "{at}: {} problem(s) after it matched:",
                    problems.len()
                )];
                lines.extend(problems);
                return Ok(Outcome::Fail(lines));
            }
        }
    }
    Ok(Outcome::Pass)
}

/// A step's changes to the cluster, in the format's order: delete, apply,
/// labels.
fn change(
    lab: &mut Lab,
    step: usize,
    changes: &Step,
    ips: &BTreeMap<String, IpAddr>,
) -> Result<(), String> {
    let work = lab.config().dir.join("conformance");
    std::fs::create_dir_all(&work).map_err(|e| format!("creating {}: {e}", work.display()))?;
    if !changes.delete.is_empty() {
        let path = work.join(format!("step{step}-delete.yaml"));
        let stubs: Vec<serde_yaml::Value> = changes
            .delete
            .iter()
            .map(|(namespace, name)| policy_stub(namespace, name))
            .collect();
        write_documents(&path, &stubs)?;
        let deleted = lab.delete(&[path]).map_err(|e| format!("deleting: {e}"))?;
        let missing: Vec<String> = deleted
            .iter()
            .filter(|(_, existed)| !existed)
            .map(|(key, _)| key.to_string())
            .collect();
        if !missing.is_empty() {
            return Err(format!("deleting: not found: {}", missing.join(", ")));
        }
    }
    if !changes.apply.is_empty() {
        let mut objects = changes.apply.clone();
        for object in &mut objects {
            substitute_value(object, ips).map_err(|e| format!("applying: {e}"))?;
        }
        // Through a file and the lab's `apply`, exactly as a user would.
        let path = work.join(format!("step{step}-apply.yaml"));
        write_documents(&path, &objects)?;
        lab.apply(&[path]).map_err(|e| format!("applying: {e}"))?;
    }
    label(lab, &changes.namespace_labels, &changes.pod_labels)
}

/// Merges labels into namespaces and pods (never removing any).
fn label(
    lab: &mut Lab,
    namespaces: &[(String, case::Labels)],
    pods: &[(super::topology::PodName, case::Labels)],
) -> Result<(), String> {
    for (namespace, labels) in namespaces {
        lab.label_namespace(namespace, labels)
            .map_err(|e| format!("labelling namespace {namespace}: {e}"))?;
    }
    for (pod, labels) in pods {
        lab.label_pod(pod, labels)
            .map_err(|e| format!("labelling pod {pod}: {e}"))?;
    }
    Ok(())
}

/// What `kubectl delete` needs to know of a NetworkPolicy.
fn policy_stub(namespace: &str, name: &str) -> serde_yaml::Value {
    let mut metadata = serde_yaml::Mapping::new();
    metadata.insert("name".into(), name.into());
    metadata.insert("namespace".into(), namespace.into());
    let mut object = serde_yaml::Mapping::new();
    object.insert("apiVersion".into(), "networking.k8s.io/v1".into());
    object.insert("kind".into(), "NetworkPolicy".into());
    object.insert("metadata".into(), metadata.into());
    object.into()
}

/// `objects` as one multi-document YAML file.
fn write_documents(path: &Path, objects: &[serde_yaml::Value]) -> Result<(), String> {
    let mut text = String::new();
    for object in objects {
        text.push_str("---\n");
        text.push_str(&serde_yaml::to_string(object).map_err(|e| e.to_string())?);
    }
    std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))
}

/// One probe of a step, as the lab runs it.
#[derive(Debug, Clone)]
struct Target {
    label: String,
    check: Check,
    expect: TruthTable,
}

/// The baseline: every pod reaching every other on every port the model
/// serves.
fn all_reachable(peers: &[Peer]) -> Vec<Target> {
    let labels: Vec<String> = peers.iter().map(|p| p.label.clone()).collect();
    model::CHECKS
        .iter()
        .map(|&check| Target {
            label: check.to_string(),
            check,
            expect: TruthTable {
                froms: labels.clone(),
                tos: labels.clone(),
                cells: vec![vec![true; labels.len()]; labels.len()],
            },
        })
        .collect()
}

/// The last observation of [`converge`].
struct Converged {
    comparisons: Vec<Comparison>,
    /// The tables of the last round, one per target.
    observed: Vec<TruthTable>,
    rounds: usize,
    elapsed: Duration,
}

impl Converged {
    fn matches(&self) -> bool {
        self.comparisons.iter().all(Comparison::matches)
    }

    /// The judged cells that differ, one line each.
    fn cells(&self) -> Vec<String> {
        self.comparisons
            .iter()
            .flat_map(|c| &c.judged)
            .map(ToString::to_string)
            .collect()
    }
}

/// Probes all targets at once (every pair, in parallel) until all match
/// or `wait` has passed.
fn converge(peers: &[Peer], targets: &[Target], wait: Duration, timeout: Duration) -> Converged {
    let started = Instant::now();
    let checks: Vec<Check> = targets.iter().map(|t| t.check).collect();
    let mut rounds = 0;
    loop {
        rounds += 1;
        let tables = matrix::probe_matrix(peers, &checks, timeout);
        let comparisons: Vec<Comparison> = targets
            .iter()
            .zip(&tables)
            .map(|(t, observed)| compare(&t.label, &t.expect, observed))
            .collect();
        let converged = Converged {
            comparisons,
            observed: tables,
            rounds,
            elapsed: started.elapsed(),
        };
        if converged.matches() || started.elapsed() >= wait {
            return converged;
        }
        std::thread::sleep(RETRY_PAUSE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runner_lab_sits_beside_the_users() {
        let base = LabConfig::new("/var/run/sluice-lab", "sluice-lab", "/bin").expect("config");
        let config = lab_config(&base).expect("derived");
        assert_eq!(config.name, "sluice-lab-conf");
        assert_eq!(config.dir, Path::new("/var/run/sluice-lab-conf"));
        assert_eq!(config.bin_dir, Path::new("/bin"));
        let long = LabConfig::new("/l", &"l".repeat(40), "/bin").expect("config");
        assert!(lab_config(&long).is_err());
    }

    #[test]
    fn sctp_is_always_skipped_with_a_reason() {
        let reason = sctp_skip_reason();
        assert!(
            reason.contains("SCTP") && !reason.ends_with(": "),
            "{reason}"
        );
    }

    #[test]
    fn probes_map_to_lab_checks() {
        let expect = TruthTable {
            froms: vec![],
            tos: vec![],
            cells: vec![],
        };
        let probe = |protocol| Probe {
            port: 81,
            protocol,
            expect: expect.clone(),
        };
        assert_eq!(check_of(&probe(Protocol::Tcp)), Some(Check::tcp(81)));
        assert_eq!(check_of(&probe(Protocol::Udp)), Some(Check::udp(81)));
        assert_eq!(check_of(&probe(Protocol::Sctp)), None);
    }

    fn write_case(dir: &Path, file: &str, name: &str) {
        let table: String = std::iter::once(format!(
            "          from\\to {}\n",
            model::pod_names().join(" ")
        ))
        .chain(
            model::pod_names()
                .iter()
                .map(|p| format!("          {p} . . . . . . . . .\n")),
        )
        .collect();
        let text = format!(
            "name: {name:?}\nsource: s\nnamespace_labels: {{}}\npod_labels: {{}}\nsteps:\n  - apply: []\n    delete: []\n    probes:\n      - port: 80\n        protocol: TCP\n        expect: |\n{table}"
        );
        std::fs::write(dir.join(file), text).expect("write");
    }

    #[test]
    fn loads_cases_in_order_and_filters_by_file_or_name() {
        let tmp = tempfile::tempdir().expect("tempdir");
        write_case(tmp.path(), "02-b.yaml", "second case");
        write_case(tmp.path(), "01-a.yaml", "first case");
        std::fs::write(tmp.path().join("03-bad.yaml"), "name: [").expect("write");
        std::fs::write(tmp.path().join("README.md"), "not a case").expect("write");
        let all = load(tmp.path(), None).expect("load");
        let files: Vec<&str> = all.iter().map(|e| e.file.as_str()).collect();
        assert_eq!(files, ["01-a.yaml", "02-b.yaml", "03-bad.yaml"]);
        assert!(all[0].case.is_ok() && all[2].case.is_err());
        let by_file = load(tmp.path(), Some("02-")).expect("load");
        assert_eq!(by_file.len(), 1);
        let by_name = load(tmp.path(), Some("first")).expect("load");
        assert_eq!(by_name[0].file, "01-a.yaml");
        assert!(matches!(
            load(tmp.path(), Some("nothing")),
            Err(ConformanceError::NoMatch { .. })
        ));
        let empty = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            load(empty.path(), None),
            Err(ConformanceError::NoCases(_))
        ));
        assert!(matches!(
            load(&empty.path().join("missing"), None),
            Err(ConformanceError::Read { .. })
        ));
    }

    #[test]
    fn labels_merge_into_namespaces_and_pods() {
        use super::super::{
            inventory::{self, LabState, NodeState, PodState},
            manifests::NAMESPACE_NAME_LABEL,
            topology::PodName,
        };
        let tmp = tempfile::tempdir().expect("tempdir");
        let config = LabConfig::new(tmp.path(), "t", "/bin").expect("config");
        let pod = PodState {
            namespace: "x".into(),
            name: "b".into(),
            node: "node1".into(),
            netns: "t-pod-x-b".into(),
            ip: "10.244.1.7".parse().expect("ip"),
            container_id: "x_b".into(),
            server_pid: None,
            labels: case::Labels::from([("pod".into(), "b".into())]),
            ports: vec![80, 81],
        };
        let lab_state = LabState {
            name: "t".into(),
            routing: Routing::Tunnel,
            pod_cidr: "10.244.0.0/16".parse().expect("cidr"),
            bin_dir: "/bin".into(),
            nodes: vec![NodeState {
                name: "node1".into(),
                netns: "t-node1".into(),
                ip: "172.30.0.11".parse().expect("ip"),
                pod_cidr: "10.244.1.0/24".parse().expect("cidr"),
                agent_pid: None,
            }],
            pods: vec![pod],
            kube_proxy: false,
            prefilter_mode: Default::default(),
            pod_attachment: Default::default(),
            flows_record: sluice_agent::config::FlowRecord::Always,
            kubeconfig: None,
        };
        inventory::save(tmp.path(), &lab_state).expect("save");
        let mut lab = Lab::open(config.clone()).expect("open");
        lab.label_namespace("y", &model::namespace_labels("y"))
            .expect("model namespace");
        let labels = |pairs: &[(&str, &str)]| -> case::Labels {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let xb: PodName = "x/b".parse().expect("pod");
        // Case 21's and 22's kind of change, then a second one on top.
        label(
            &mut lab,
            &[("y".into(), labels(&[("ns2", "updated")]))],
            &[(xb.clone(), labels(&[("pod", "b"), ("pod2", "updated")]))],
        )
        .expect("label");
        label(
            &mut lab,
            &[("y".into(), labels(&[("ns", "other")]))],
            &[(xb.clone(), labels(&[("pod3", "x")]))],
        )
        .expect("label again");
        let read = |path: PathBuf| -> serde_yaml::Value {
            serde_yaml::from_str(&std::fs::read_to_string(path).expect("read")).expect("yaml")
        };
        let manifests = config.manifests();
        let ns = read(manifests.namespace_path("y"));
        let ns_labels: case::Labels =
            serde_yaml::from_value(ns["metadata"]["labels"].clone()).expect("labels");
        assert_eq!(
            ns_labels,
            labels(&[
                ("ns", "other"),
                ("ns2", "updated"),
                (NAMESPACE_NAME_LABEL, "y")
            ])
        );
        let pod = read(manifests.pod_path(&xb));
        let pod_labels: case::Labels =
            serde_yaml::from_value(pod["metadata"]["labels"].clone()).expect("labels");
        assert_eq!(
            pod_labels,
            labels(&[("pod", "b"), ("pod2", "updated"), ("pod3", "x")])
        );
        let ports: Vec<&str> = pod["spec"]["containers"][0]["ports"]
            .as_sequence()
            .expect("ports")
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert_eq!(
            ports,
            [
                "serve-80-tcp",
                "serve-80-udp",
                "serve-80-sctp",
                "serve-81-tcp",
                "serve-81-udp",
                "serve-81-sctp"
            ]
        );
        assert!(label(&mut lab, &[], &[("q/q".parse().expect("pod"), labels(&[]))]).is_err());
    }

    #[test]
    fn deletes_name_the_policy_only() {
        let stub = policy_stub("x", "deny-all");
        assert_eq!(stub["kind"], "NetworkPolicy");
        assert_eq!(stub["metadata"]["namespace"], "x");
        assert_eq!(stub["metadata"]["name"], "deny-all");
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("d.yaml");
        write_documents(&path, &[stub.clone(), policy_stub("y", "p")]).expect("write");
        let objects = super::super::objects::read_path(&path).expect("read back");
        let keys: Vec<String> = objects.iter().map(|o| o.key.to_string()).collect();
        assert_eq!(keys, ["networkpolicy x/deny-all", "networkpolicy y/p"]);
    }
}
