//! Scenario files (`tests/conformance/*.yaml`): the data, its validation and loading.
//!
//! ```yaml
//! scenarios:
//! - name: updated-pod                    # unique across all files
//!   mirrors: "should allow ingress access from updated pod"   # upstream ginkgo.It title
//!   origin: upstream-e2e                 # upstream-e2e | upstream-e2e-udp | upstream-e2e-sctp | cyclonus
//!   kinds: [pod-relabel, pod-selector]   # what the case exercises (see `Kind`)
//!   live: true                           # in the live subset (TCP/UDP over IPv4 only)
//!   steps:
//!   - apply: |                           # one or more NetworkPolicies (`---` between them);
//!       apiVersion: networking.k8s.io/v1 # each creates, or replaces the one of the same
//!       kind: NetworkPolicy              # namespace/name
//!       metadata: {name: p, namespace: x}
//!       spec: {...}
//!     probes:
//!     - {port: 80, protocol: TCP, default: allow, expect: ["* -> x/a: deny"]}
//!   - label_pod: {pod: x/b, set: {pod2: updated}, remove: [other]}
//!     probes:
//!     - port: 80
//!       protocol: TCP
//!       family: IPv4                     # default; IPv6 probes the pods' IPv6 addresses
//!       grid: |                          # or: a literal grid, `.` connected, `X` blocked
//!         X . . . . . . . .
//!         ...
//! ```
//! The other actions are `delete_policy: x/name`, `delete_all_policies: true` and
//! `label_namespace: {namespace: y, set: {...}, remove: [...]}`. A step has exactly one action and
//! at least one probe.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde::Deserialize;

use super::model::{IpFamily, LabelChange, NAMESPACES, PORTS, PodId, Protocol};
use super::table::{ExpectRule, Expectation, TruthTable, Verdict};

/// The directory holding the scenario files of this crate.
pub fn scenario_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance")
}

/// Loads and validates every `*.yaml` file of `dir`, in file-name order.
pub fn load_all(dir: &Path) -> Result<Vec<Scenario>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading scenario directory {}", dir.display()))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("listing {}", dir.display()))?;
    files.retain(|p| p.extension().is_some_and(|e| e == "yaml"));
    files.sort();
    ensure!(
        !files.is_empty(),
        "no scenario files (*.yaml) in {}",
        dir.display()
    );
    let mut scenarios = Vec::new();
    let mut names = BTreeSet::new();
    for file in files {
        for scenario in load_file(&file)? {
            ensure!(
                names.insert(scenario.name.clone()),
                "{}: scenario `{}` is defined twice",
                file.display(),
                scenario.name
            );
            scenarios.push(scenario);
        }
    }
    Ok(scenarios)
}

/// The scenarios tagged `live: true`: the representative subset for the kernel datapath.
pub fn load_live(dir: &Path) -> Result<Vec<Scenario>> {
    Ok(load_all(dir)?.into_iter().filter(|s| s.live).collect())
}

/// Loads and validates one scenario file.
pub fn load_file(path: &Path) -> Result<Vec<Scenario>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_scenarios(&text, path)
}

/// Parses and validates the text of one scenario file; `origin` names it in errors.
pub fn parse_scenarios(text: &str, origin: &Path) -> Result<Vec<Scenario>> {
    let file: ScenarioFile = serde_yaml_ng::from_str(text)
        .with_context(|| format!("{}: invalid scenario file", origin.display()))?;
    let mut scenarios = Vec::new();
    for raw in file.scenarios {
        let name = raw.name.clone();
        let scenario = Scenario::from_raw(raw, origin)
            .with_context(|| format!("{}: scenario `{name}`", origin.display()))?;
        scenarios.push(scenario);
    }
    Ok(scenarios)
}

/// Where a scenario comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// `network_policy.go`, "NetworkPolicy between server and client".
    UpstreamE2e,
    /// `network_policy.go`, "... using UDP".
    UpstreamE2eUdp,
    /// `network_policy.go`, "... using SCTP".
    UpstreamE2eSctp,
    /// The kinds of cases the cyclonus generator produces.
    Cyclonus,
}

/// What a scenario exercises. Every kind is covered by at least one scenario (a test checks).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    DefaultDenyIngress,
    DefaultDenyEgress,
    AllowAll,
    PodSelector,
    NamespaceSelector,
    /// `namespaceSelector` and `podSelector` in one peer.
    AndPeer,
    /// Several peers in one `from`/`to` list.
    OrPeers,
    /// Several rules in one policy, each with its own peers and ports.
    OrRules,
    /// `from: []`, `to: []`, `ports: []`: lists that match everything.
    EmptyLists,
    MatchIn,
    MatchNotIn,
    MatchExists,
    MatchDoesNotExist,
    NumberedPort,
    NamedPort,
    /// A named port that names no container port of the rule's protocol.
    NamedPortWrongProtocol,
    EndPort,
    /// A port entry with a protocol and no port.
    ProtocolOnly,
    IpBlock,
    IpBlockExcept,
    Ipv6,
    MultiplePolicies,
    PolicyUpdate,
    PolicyDelete,
    DeleteAll,
    PodRelabel,
    NamespaceRelabel,
    IngressAndEgress,
    EgressPorts,
    Udp,
    Sctp,
    PolicyTypesDefault,
}

impl Kind {
    pub const ALL: [Kind; 32] = [
        Kind::DefaultDenyIngress,
        Kind::DefaultDenyEgress,
        Kind::AllowAll,
        Kind::PodSelector,
        Kind::NamespaceSelector,
        Kind::AndPeer,
        Kind::OrPeers,
        Kind::OrRules,
        Kind::EmptyLists,
        Kind::MatchIn,
        Kind::MatchNotIn,
        Kind::MatchExists,
        Kind::MatchDoesNotExist,
        Kind::NumberedPort,
        Kind::NamedPort,
        Kind::NamedPortWrongProtocol,
        Kind::EndPort,
        Kind::ProtocolOnly,
        Kind::IpBlock,
        Kind::IpBlockExcept,
        Kind::Ipv6,
        Kind::MultiplePolicies,
        Kind::PolicyUpdate,
        Kind::PolicyDelete,
        Kind::DeleteAll,
        Kind::PodRelabel,
        Kind::NamespaceRelabel,
        Kind::IngressAndEgress,
        Kind::EgressPorts,
        Kind::Udp,
        Kind::Sctp,
        Kind::PolicyTypesDefault,
    ];
}

/// One conformance case.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: String,
    /// The upstream `ginkgo.It` title (or the cyclonus case family) this scenario mirrors.
    pub mirrors: String,
    pub origin: Origin,
    pub kinds: Vec<Kind>,
    /// In the live subset: probes TCP/UDP over IPv4 only (checked at load).
    pub live: bool,
    pub steps: Vec<Step>,
    /// The file it was loaded from.
    pub file: PathBuf,
}

impl Scenario {
    /// Number of truth-table cells the scenario compares.
    pub fn cell_count(&self) -> usize {
        self.steps.iter().map(|s| s.probes.len()).sum::<usize>() * super::model::POD_COUNT.pow(2)
    }

    fn from_raw(raw: RawScenario, file: &Path) -> Result<Scenario> {
        ensure!(!raw.name.trim().is_empty(), "empty name");
        ensure!(!raw.mirrors.trim().is_empty(), "empty `mirrors`");
        ensure!(!raw.kinds.is_empty(), "no `kinds`");
        ensure!(!raw.steps.is_empty(), "no steps");
        let mut steps = Vec::new();
        for (i, step) in raw.steps.into_iter().enumerate() {
            steps.push(Step::from_raw(step).with_context(|| format!("step {}", i + 1))?);
        }
        if raw.live {
            for (i, step) in steps.iter().enumerate() {
                for probe in &step.probes {
                    ensure!(
                        probe.protocol != Protocol::SCTP && probe.family == IpFamily::IPv4,
                        "step {}: a live scenario probes TCP or UDP over IPv4 only, not {}",
                        i + 1,
                        probe.describe()
                    );
                }
            }
        }
        Ok(Scenario {
            name: raw.name,
            mirrors: raw.mirrors,
            origin: raw.origin,
            kinds: raw.kinds,
            live: raw.live,
            steps,
            file: file.to_owned(),
        })
    }
}

/// One action followed by the probes that check its effect.
#[derive(Clone, Debug)]
pub struct Step {
    pub action: Action,
    pub probes: Vec<Probe>,
}

impl Step {
    fn from_raw(raw: RawStep) -> Result<Step> {
        let mut actions = Vec::new();
        if let Some(text) = raw.apply {
            actions.push(Action::Apply(parse_policy_docs(&text).context("`apply`")?));
        }
        if let Some(target) = raw.delete_policy {
            let (namespace, name) = target
                .split_once('/')
                .filter(|(ns, name)| !ns.is_empty() && !name.is_empty())
                .ok_or_else(|| {
                    anyhow!("`delete_policy: {target}`: expected `<namespace>/<name>`")
                })?;
            actions.push(Action::DeletePolicy {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            });
        }
        match raw.delete_all_policies {
            Some(true) => actions.push(Action::DeleteAllPolicies),
            Some(false) => bail!("`delete_all_policies: false` is not an action; leave it out"),
            None => {}
        }
        if let Some(label) = raw.label_pod {
            let pod = PodId::parse(&label.pod)
                .ok_or_else(|| anyhow!("`label_pod`: no pod `{}` in the model", label.pod))?;
            ensure!(
                !label.set.is_empty() || !label.remove.is_empty(),
                "`label_pod` changes nothing"
            );
            actions.push(Action::LabelPod {
                pod,
                change: LabelChange {
                    set: label.set,
                    remove: label.remove,
                },
            });
        }
        if let Some(label) = raw.label_namespace {
            let namespace = *NAMESPACES
                .iter()
                .find(|n| **n == label.namespace)
                .ok_or_else(|| {
                    anyhow!(
                        "`label_namespace`: no namespace `{}` in the model",
                        label.namespace
                    )
                })?;
            ensure!(
                !label.set.is_empty() || !label.remove.is_empty(),
                "`label_namespace` changes nothing"
            );
            actions.push(Action::LabelNamespace {
                namespace,
                change: LabelChange {
                    set: label.set,
                    remove: label.remove,
                },
            });
        }
        ensure!(
            actions.len() == 1,
            "a step has exactly one of apply, delete_policy, delete_all_policies, label_pod, label_namespace (found {})",
            actions.len()
        );
        ensure!(!raw.probes.is_empty(), "a step needs at least one probe");
        let mut probes = Vec::new();
        for (i, probe) in raw.probes.into_iter().enumerate() {
            probes.push(Probe::from_raw(probe).with_context(|| format!("probe {}", i + 1))?);
        }
        Ok(Step {
            action: actions.remove(0),
            probes,
        })
    }
}

/// What a step changes before its probes run.
#[derive(Clone, Debug)]
pub enum Action {
    /// Create each policy, or replace the one with the same namespace and name.
    Apply(Vec<PolicyDoc>),
    DeletePolicy {
        namespace: String,
        name: String,
    },
    DeleteAllPolicies,
    LabelPod {
        pod: PodId,
        change: LabelChange,
    },
    LabelNamespace {
        namespace: &'static str,
        change: LabelChange,
    },
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Apply(docs) => {
                let names: Vec<String> = docs
                    .iter()
                    .map(|d| format!("{}/{}", d.namespace, d.name))
                    .collect();
                write!(f, "apply {}", names.join(", "))
            }
            Action::DeletePolicy { namespace, name } => {
                write!(f, "delete policy {namespace}/{name}")
            }
            Action::DeleteAllPolicies => f.write_str("delete all policies"),
            Action::LabelPod { pod, change } => write!(f, "label pod {pod}: {change}"),
            Action::LabelNamespace { namespace, change } => {
                write!(f, "label namespace {namespace}: {change}")
            }
        }
    }
}

/// One NetworkPolicy object of an `apply`, as YAML text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyDoc {
    pub namespace: String,
    pub name: String,
    /// The single-document YAML of the object (`apiVersion`, `kind`, `metadata`, `spec`).
    pub yaml: String,
}

/// Splits a (multi-document) manifest into policy objects and checks each names itself.
fn parse_policy_docs(text: &str) -> Result<Vec<PolicyDoc>> {
    let mut docs = Vec::new();
    for (i, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml_ng::Value::deserialize(document)
            .with_context(|| format!("document {}", i + 1))?;
        let field = |path: &[&str]| -> Option<String> {
            let mut v = &value;
            for key in path {
                v = v.get(*key)?;
            }
            v.as_str().map(str::to_owned)
        };
        let kind = field(&["kind"]).unwrap_or_default();
        ensure!(
            kind == "NetworkPolicy",
            "document {}: kind is `{kind}`, expected NetworkPolicy",
            i + 1
        );
        let name = field(&["metadata", "name"])
            .ok_or_else(|| anyhow!("document {}: no metadata.name", i + 1))?;
        let namespace = field(&["metadata", "namespace"]).ok_or_else(|| {
            anyhow!(
                "document {}: policy `{name}` has no metadata.namespace",
                i + 1
            )
        })?;
        ensure!(
            NAMESPACES.contains(&namespace.as_str()),
            "policy `{name}`: no namespace `{namespace}` in the model"
        );
        ensure!(
            !docs
                .iter()
                .any(|d: &PolicyDoc| d.namespace == namespace && d.name == name),
            "policy {namespace}/{name} appears twice in one apply"
        );
        let yaml = serde_yaml_ng::to_string(&value).context("re-serialising a policy")?;
        docs.push(PolicyDoc {
            namespace,
            name,
            yaml,
        });
    }
    ensure!(!docs.is_empty(), "no policy");
    Ok(docs)
}

/// Probe every ordered pod pair on one port and protocol and compare with `expected`.
#[derive(Clone, Debug)]
pub struct Probe {
    pub port: u16,
    pub protocol: Protocol,
    pub family: IpFamily,
    pub expectation: Expectation,
    pub expected: TruthTable,
}

impl Probe {
    /// `TCP/80 IPv4`.
    pub fn describe(&self) -> String {
        format!("{}/{} {}", self.protocol, self.port, self.family)
    }

    fn from_raw(raw: RawProbe) -> Result<Probe> {
        ensure!(
            PORTS.contains(&raw.port),
            "port {} is not served by the model (80, 81)",
            raw.port
        );
        let expectation = match (raw.default, raw.expect, raw.grid) {
            (Some(default), rules, None) => Expectation::Rules {
                default,
                rules: rules
                    .iter()
                    .map(|r| ExpectRule::parse(r))
                    .collect::<Result<_>>()?,
            },
            (None, rules, Some(grid)) if rules.is_empty() => {
                Expectation::Grid(TruthTable::parse_grid(&grid)?)
            }
            _ => bail!("a probe has either `default` (and optional `expect` rules) or a `grid`"),
        };
        let expected = expectation.table();
        Ok(Probe {
            port: raw.port,
            protocol: raw.protocol,
            family: raw.family,
            expectation,
            expected,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    scenarios: Vec<RawScenario>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: String,
    mirrors: String,
    origin: Origin,
    kinds: Vec<Kind>,
    #[serde(default)]
    live: bool,
    steps: Vec<RawStep>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    apply: Option<String>,
    delete_policy: Option<String>,
    delete_all_policies: Option<bool>,
    label_pod: Option<RawPodLabel>,
    label_namespace: Option<RawNamespaceLabel>,
    #[serde(default)]
    probes: Vec<RawProbe>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPodLabel {
    pod: String,
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    remove: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNamespaceLabel {
    namespace: String,
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    remove: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    port: u16,
    protocol: Protocol,
    #[serde(default)]
    family: IpFamily,
    default: Option<Verdict>,
    #[serde(default)]
    expect: Vec<String>,
    grid: Option<String>,
}
