//! The pure core of the controller: the cluster's objects as the watchers last reported them
//! (the *desired* inputs) and the incremental compiler holding what was applied. [`Pipeline::record`]
//! takes one [`Change`] (cheap: it only marks what is dirty); [`Pipeline::flush`] brings the
//! compiler up to date with one compiler call per dirty object (the first flush is one full
//! compile) and says what changed. No Kubernetes client here: the translation is tested without
//! an API.
//!
//! Rules:
//! - A pod in a namespace the pipeline has not seen (yet) waits until the namespace arrives.
//!   A new namespace costs one full compile (the compiler adds namespaces only that way); several
//!   in one flush cost one. A namespace's labels changing costs one full compile too.
//! - An address claimed by two pods (a terminated pod's address reused before its deletion was
//!   seen) belongs to the pod that had it first; the other pod is a workload without that
//!   address until the first lets it go.
//! - An invalid policy is not applied: its error is kept for its status, and the last valid
//!   version of the object (if any) stays in force, also when the object was deleted and
//!   re-created invalid between two flushes.
//! - A pod the compiler refuses (its own error, e.g. a malformed named port) is left out, with
//!   its error logged and counted.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use bulkhead_policy::model::Namespace;
use bulkhead_policy::{
    AllocationTable, CompiledState, Compiler, Incremental, Inventory, ObjectKey, PolicySet,
    WorkloadRef,
};
use jiff::Timestamp;

use super::convert::{PodEntry, PolicyInput};
use super::subject;
use crate::sync::{NodeAssignment, SyncHub, Touched};

mod pods;

/// What the pipeline could not do.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The compiler refused the inputs as a whole (e.g. no identity number left).
    #[error("compile: {0}")]
    Compile(#[source] bulkhead_policy::Error),
}

/// One observed change of a watched object.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// A namespace exists with these labels (without `kubernetes.io/metadata.name`).
    Namespace(String, BTreeMap<String, String>),
    /// A namespace is gone.
    NamespaceGone(String),
    /// A pod is a workload (see `convert`).
    Pod(Box<PodEntry>),
    /// A pod is gone, or is no workload any more.
    PodGone(WorkloadRef),
    /// A node exists.
    Node(String),
    /// A node is gone.
    NodeGone(String),
    /// A policy object exists.
    Policy(Box<PolicyInput>),
    /// A policy object is gone.
    PolicyGone(ObjectKey),
}

/// A policy object's record.
#[derive(Clone, Debug)]
pub struct PolicyRecord {
    /// The object as last observed.
    pub input: PolicyInput,
    /// Whether that version is valid (the one-line error otherwise).
    pub valid: Result<(), String>,
    /// The version the compiler holds (the last valid one).
    pub applied: Option<PolicyInput>,
    /// The observed version changed since the last flush (`valid` is about an older one).
    pub pending: bool,
}

/// What one [`Pipeline::flush`] did.
#[derive(Debug, Default)]
pub struct Flushed {
    /// The compiled state or the node assignment changed (publish).
    pub changed: bool,
    /// Policy objects whose applied version changed (including removals), with the applied
    /// generation (None: removed).
    pub policies: BTreeMap<ObjectKey, Option<i64>>,
    /// Compiler calls made (one per changed object, plus full compiles).
    pub compiler_calls: usize,
    /// Full compiles run.
    pub full_compiles: usize,
    /// Objects refused (invalid policies, pods the compiler refused).
    pub refused: usize,
}

/// The pipeline; see the module documentation.
pub struct Pipeline {
    compiler: Option<Incremental>,
    /// The allocation table to start from (taken by the first flush).
    seed: Option<AllocationTable>,
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    pods: BTreeMap<WorkloadRef, PodEntry>,
    nodes: BTreeSet<String>,
    policies: BTreeMap<ObjectKey, PolicyRecord>,
    /// Policy objects removed but still applied, with the version the compiler holds.
    gone_policies: BTreeMap<ObjectKey, PolicyInput>,
    /// Pods as applied (addresses as granted).
    applied: BTreeMap<WorkloadRef, PodEntry>,
    ip_owner: HashMap<IpAddr, WorkloadRef>,
    /// Applied pods that lack a desired address another pod holds.
    short: BTreeSet<WorkloadRef>,
    assignment: NodeAssignment,
    dirty_namespaces: BTreeSet<String>,
    dirty_pods: BTreeSet<WorkloadRef>,
    dirty_policies: BTreeSet<ObjectKey>,
    dirty_nodes: bool,
    /// Keys changed since the last publication (see [`Pipeline::publish`]).
    touched: Touched,
    /// A change since the last publication has no key list (a full compile without a diff).
    full_publish: bool,
}

impl Pipeline {
    /// An empty pipeline whose first flush compiles with `table` (the persisted allocation).
    pub fn new(table: AllocationTable) -> Self {
        Pipeline {
            compiler: None,
            seed: Some(table),
            namespaces: BTreeMap::new(),
            pods: BTreeMap::new(),
            nodes: BTreeSet::new(),
            policies: BTreeMap::new(),
            gone_policies: BTreeMap::new(),
            applied: BTreeMap::new(),
            ip_owner: HashMap::new(),
            short: BTreeSet::new(),
            assignment: NodeAssignment::new(),
            dirty_namespaces: BTreeSet::new(),
            dirty_pods: BTreeSet::new(),
            dirty_policies: BTreeSet::new(),
            dirty_nodes: false,
            touched: Touched::default(),
            full_publish: true,
        }
    }

    /// Records one change (no compile).
    pub fn record(&mut self, change: Change) {
        match change {
            Change::Namespace(name, labels) => {
                if self.namespaces.get(&name) != Some(&labels) {
                    self.namespaces.insert(name.clone(), labels);
                    self.dirty_namespaces.insert(name);
                }
            }
            Change::NamespaceGone(name) => {
                if self.namespaces.remove(&name).is_some() {
                    self.dirty_namespaces.insert(name);
                }
            }
            Change::Pod(entry) => {
                let entry = *entry;
                let r = entry.reference();
                if self.pods.get(&r) != Some(&entry) {
                    self.pods.insert(r.clone(), entry);
                    self.dirty_pods.insert(r);
                }
            }
            Change::PodGone(r) => {
                if self.pods.remove(&r).is_some() {
                    self.dirty_pods.insert(r);
                }
            }
            Change::Node(name) => self.dirty_nodes |= self.nodes.insert(name),
            Change::NodeGone(name) => self.dirty_nodes |= self.nodes.remove(&name),
            Change::Policy(input) => {
                let input = *input;
                let key = input.object.key();
                match self.policies.get_mut(&key) {
                    // Only the stored status (or other bookkeeping) changed.
                    Some(r) if r.input.same_spec(&input) => r.input.status = input.status,
                    Some(r) => {
                        r.input = input;
                        r.pending = true;
                        self.dirty_policies.insert(key);
                    }
                    None => {
                        // Removed and re-created before a flush (`kubectl replace --force`): the
                        // compiler still holds the old version. Keep it as applied, so that an
                        // invalid re-creation leaves it in force and a later removal removes it.
                        let applied = self.gone_policies.remove(&key);
                        self.policies.insert(
                            key.clone(),
                            PolicyRecord {
                                input,
                                valid: Ok(()),
                                applied,
                                pending: true,
                            },
                        );
                        self.dirty_policies.insert(key);
                    }
                }
            }
            Change::PolicyGone(key) => {
                if let Some(r) = self.policies.remove(&key) {
                    if let Some(applied) = r.applied {
                        self.gone_policies.insert(key.clone(), applied);
                    }
                    self.dirty_policies.insert(key);
                }
            }
        }
    }

    /// Every observed object of one kind, for replacing that kind's contents after a re-list:
    /// the keys it holds now.
    pub fn pod_refs(&self) -> BTreeSet<WorkloadRef> {
        self.pods.keys().cloned().collect()
    }

    /// The namespaces observed.
    pub fn namespace_names(&self) -> BTreeSet<String> {
        self.namespaces.keys().cloned().collect()
    }

    /// The nodes observed.
    pub fn node_names(&self) -> BTreeSet<String> {
        self.nodes.clone()
    }

    /// The policy objects observed, of `kind`.
    pub fn policy_keys(&self, kind: bulkhead_policy::Kind) -> BTreeSet<ObjectKey> {
        self.policies
            .keys()
            .filter(|k| k.kind == kind)
            .cloned()
            .collect()
    }

    /// Whether a flush has work to do.
    pub fn dirty(&self) -> bool {
        self.compiler.is_none()
            || !self.dirty_namespaces.is_empty()
            || !self.dirty_pods.is_empty()
            || !self.dirty_policies.is_empty()
            || self.dirty_nodes
    }

    /// The compiled state (None before the first flush).
    pub fn state(&self) -> Option<&CompiledState> {
        self.compiler.as_ref().map(Incremental::state)
    }

    /// A copy of the compiled state as the hub needs it: the maps, rules and workloads, without
    /// `identities` and `next_change` (the hub reads neither; the identity descriptions are the
    /// largest part to copy).
    pub fn publishable_state(&self) -> Option<CompiledState> {
        let s = self.state()?;
        Some(CompiledState {
            policy: s.policy.clone(),
            defaults: s.defaults.clone(),
            addresses: s.addresses.clone(),
            workloads: s.workloads.clone(),
            identities: BTreeMap::new(),
            rules: s.rules.clone(),
            next_change: None,
        })
    }

    /// Publishes the compiled state and the assignment to `hub`: the keys changed since the
    /// last publication when every change since has its keys ([`SyncHub::update_touched`], no
    /// copy of the state), the whole state otherwise (the first publication, full compiles).
    /// Returns the hub's revision; None before the first compile.
    pub fn publish(&mut self, hub: &SyncHub) -> Option<u64> {
        let revision = if self.full_publish {
            hub.update(self.publishable_state()?, &self.assignment)
        } else {
            hub.update_touched(self.state()?, &self.touched, &self.assignment)
        };
        self.touched = Touched::default();
        self.full_publish = false;
        Some(revision)
    }

    /// The allocation table the compiler holds (the seed before the first flush).
    pub fn table(&self) -> Option<&AllocationTable> {
        match &self.compiler {
            Some(c) => Some(c.table()),
            None => self.seed.as_ref(),
        }
    }

    /// Node -> (workload -> pod UID) of the applied pods; every observed node is listed.
    pub fn assignment(&self) -> &NodeAssignment {
        &self.assignment
    }

    /// The policy records, by key.
    pub fn policies(&self) -> &BTreeMap<ObjectKey, PolicyRecord> {
        &self.policies
    }

    /// Compiles what changed since the last flush, at instant `now` (also moves the compiler to
    /// `now` when a rule's window opened or closed since).
    pub fn flush(&mut self, now: Timestamp) -> Result<Flushed, PipelineError> {
        let mut out = Flushed::default();
        if self.compiler.is_none() {
            self.initial(now, &mut out)?;
        } else {
            self.flush_namespaces(&mut out)?;
            self.flush_policies(&mut out);
            self.flush_pods(&mut out);
        }
        if std::mem::take(&mut self.dirty_nodes) {
            out.changed |= self.sync_nodes();
        }
        if let Some(c) = &mut self.compiler
            && c.state().next_change.is_some_and(|t| t <= now)
        {
            let diff = c.set_time(now).map_err(PipelineError::Compile)?;
            self.touched.add(&diff);
            out.changed |= !diff.is_empty();
            out.compiler_calls += 1;
            out.full_compiles += 1;
        }
        Ok(out)
    }

    /// The first flush: one full compile of everything observed. On error nothing is kept
    /// (the seed table included), so the next flush starts over.
    fn initial(&mut self, now: Timestamp, out: &mut Flushed) -> Result<(), PipelineError> {
        let result = self.try_initial(now, out);
        if result.is_err() {
            self.start_over(self.seed.clone().unwrap_or_default());
            out.policies.clear();
        }
        result
    }

    /// Forgets what was applied: the next flush is a full compile of everything observed,
    /// starting from `table`.
    fn start_over(&mut self, table: AllocationTable) {
        self.compiler = None;
        self.full_publish = true;
        self.seed = Some(table);
        self.applied.clear();
        self.ip_owner.clear();
        self.short.clear();
        self.assignment.clear();
        // The new compiler holds no removed policy either.
        self.gone_policies.clear();
        for record in self.policies.values_mut() {
            record.applied = None;
            record.pending = true;
        }
    }

    fn try_initial(&mut self, now: Timestamp, out: &mut Flushed) -> Result<(), PipelineError> {
        let table = self.seed.clone().unwrap_or_default();
        let mut policies = PolicySet::new();
        for (key, record) in &mut self.policies {
            record.pending = false;
            match policies.apply(SOURCE, record.input.object.clone()) {
                Ok(_) => {
                    record.valid = Ok(());
                    record.applied = Some(record.input.clone());
                    out.policies
                        .insert(key.clone(), Some(record.input.generation));
                }
                Err(e) => {
                    record.valid = Err(e.to_string());
                    out.refused += 1;
                }
            }
        }
        let inventory = Inventory {
            namespaces: self
                .namespaces
                .iter()
                .map(|(name, labels)| Namespace {
                    name: name.clone(),
                    labels: labels.clone(),
                })
                .collect(),
            workloads: Vec::new(),
        };
        let refs: Vec<WorkloadRef> = self.pods.keys().cloned().collect();
        let mut workloads = Vec::new();
        for r in refs {
            if let Some(w) = self.grant(&r, &inventory, out) {
                workloads.push(w);
            }
        }
        let inventory = Inventory {
            workloads,
            ..inventory
        };
        let compiled = match Incremental::new(
            Compiler::new(table.clone()),
            policies.clone(),
            inventory.clone(),
            now,
        ) {
            Ok(c) => c,
            // A set that compiles only one by one (a rule id collision): apply each policy on
            // its own, refusing the ones that collide.
            Err(_) if !policies.is_empty() => {
                let mut c =
                    Incremental::new(Compiler::new(table), PolicySet::new(), inventory, now)
                        .map_err(PipelineError::Compile)?;
                for (key, record) in &mut self.policies {
                    if record.applied.is_none() {
                        continue;
                    }
                    out.compiler_calls += 1;
                    if let Err(e) = c.apply_policy(SOURCE, record.input.object.clone()) {
                        record.valid = Err(e.to_string());
                        record.applied = None;
                        out.policies.remove(key);
                        out.refused += 1;
                    }
                }
                c
            }
            Err(e) => return Err(PipelineError::Compile(e)),
        };
        out.compiler_calls += 1;
        out.full_compiles += 1;
        out.changed = true;
        self.compiler = Some(compiled);
        self.seed = None;
        self.full_publish = true;
        self.dirty_pods.clear();
        self.dirty_policies.clear();
        self.dirty_namespaces.clear();
        self.dirty_nodes = true;
        Ok(())
    }

    /// Lists every observed node in the assignment, drops unobserved nodes without pods;
    /// returns whether the node list changed.
    fn sync_nodes(&mut self) -> bool {
        let mut changed = false;
        for n in &self.nodes {
            if !self.assignment.contains_key(n) {
                self.assignment.insert(n.clone(), BTreeMap::new());
                changed = true;
            }
        }
        let nodes = &self.nodes;
        let before = self.assignment.len();
        self.assignment
            .retain(|n, pods| nodes.contains(n) || !pods.is_empty());
        changed || before != self.assignment.len()
    }

    fn flush_namespaces(&mut self, out: &mut Flushed) -> Result<(), PipelineError> {
        let dirty = std::mem::take(&mut self.dirty_namespaces);
        if dirty.is_empty() {
            return Ok(());
        }
        let Some(c) = self.compiler.as_mut() else {
            return Ok(());
        };
        let known: BTreeSet<String> = c
            .inventory()
            .namespaces
            .iter()
            .map(|n| n.name.clone())
            .collect();
        let added: Vec<&String> = dirty
            .iter()
            .filter(|n| !known.contains(*n) && self.namespaces.contains_key(*n))
            .collect();
        if !added.is_empty() {
            // Rebuild with the new namespaces (full compile), keeping everything else.
            let Some(c) = self.compiler.take() else {
                return Ok(());
            };
            let at = c.at();
            let table = c.table().clone();
            let (compiler, policies, mut inventory, _) = c.into_parts();
            for name in &added {
                inventory.namespaces.push(Namespace {
                    name: (*name).clone(),
                    labels: self.namespaces[*name].clone(),
                });
            }
            match Incremental::new(compiler, policies, inventory, at) {
                Ok(rebuilt) => {
                    self.compiler = Some(rebuilt);
                    self.full_publish = true;
                }
                Err(e) => {
                    // The compiler is gone with its inputs: start over from the same table.
                    self.start_over(table);
                    return Err(PipelineError::Compile(e));
                }
            }
            out.compiler_calls += 1;
            out.full_compiles += 1;
            out.changed = true;
        }
        for name in &dirty {
            let Some(c) = self.compiler.as_mut() else {
                break;
            };
            match self.namespaces.get(name) {
                Some(labels) if known.contains(name) => {
                    let held = c.inventory().namespace_labels(name);
                    let mut wanted = labels.clone();
                    wanted.insert(
                        bulkhead_policy::model::inventory::NAMESPACE_NAME_LABEL.to_owned(),
                        name.clone(),
                    );
                    if held.as_ref() != Some(&wanted) {
                        let diff = c
                            .set_namespace_labels(name, labels.clone())
                            .map_err(PipelineError::Compile)?;
                        self.touched.add(&diff);
                        out.compiler_calls += 1;
                        out.full_compiles += 1;
                        out.changed |= !diff.is_empty();
                    }
                }
                _ => {}
            }
            // Pods of the namespace: admitted when it appears, withdrawn when it goes.
            let pods = self
                .pods
                .keys()
                .chain(self.applied.keys())
                .filter(|r| r.namespace == *name)
                .cloned()
                .collect::<Vec<_>>();
            self.dirty_pods.extend(pods);
        }
        Ok(())
    }

    fn flush_policies(&mut self, out: &mut Flushed) {
        let Some(c) = self.compiler.as_mut() else {
            return;
        };
        for key in std::mem::take(&mut self.dirty_policies) {
            match self.policies.get_mut(&key) {
                None => {
                    if self.gone_policies.remove(&key).is_some() {
                        out.compiler_calls += 1;
                        match c.remove_policy(&key) {
                            Ok(diff) => {
                                self.touched.add(&diff);
                                out.changed |= !diff.is_empty();
                                out.policies.insert(key, None);
                            }
                            Err(e) => {
                                tracing::error!(policy = %key, error = %e, "policy removal failed");
                                out.refused += 1;
                            }
                        }
                    }
                }
                Some(record) => {
                    record.pending = false;
                    if record
                        .applied
                        .as_ref()
                        .is_some_and(|a| a.same_spec(&record.input))
                    {
                        continue;
                    }
                    out.compiler_calls += 1;
                    match c.apply_policy(SOURCE, record.input.object.clone()) {
                        Ok(diff) => {
                            self.touched.add(&diff);
                            out.changed |= !diff.is_empty();
                            record.valid = Ok(());
                            record.applied = Some(record.input.clone());
                            out.policies.insert(key, Some(record.input.generation));
                        }
                        Err(e) => {
                            tracing::info!(policy = %key, error = %e, "policy refused");
                            record.valid = Err(e.to_string());
                            out.refused += 1;
                        }
                    }
                }
            }
        }
    }

    /// Node names running applied workloads that `object`'s subject selects.
    pub fn subject_nodes(&self, object: &bulkhead_policy::PolicyObject) -> BTreeSet<String> {
        let mut nodes = BTreeSet::new();
        let empty = BTreeMap::new();
        let candidates: Box<dyn Iterator<Item = &PodEntry>> = match subject::scope(object) {
            Some(ns) => Box::new(
                self.applied
                    .range(WorkloadRef::new(ns, "")..)
                    .take_while(move |(r, _)| r.namespace == ns)
                    .map(|(_, p)| p),
            ),
            None => Box::new(self.applied.values()),
        };
        for p in candidates {
            if nodes.contains(&p.node) {
                continue;
            }
            let labels = self.namespaces.get(&p.workload.namespace).unwrap_or(&empty);
            if subject::selects_workload(object, labels, &p.workload) {
                nodes.insert(p.node.clone());
            }
        }
        nodes
    }
}

/// Where objects come from, as compiler errors name it (the errors name the object and field).
const SOURCE: &str = "api";
