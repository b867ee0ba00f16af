//! The hub: current state, per-node views and histories, acknowledgements.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use bulkhead_policy::{
    AddrPrefix, CompiledState, CompiledWorkload, MapDiff, PolicyEntryKey, RuleRef, WorkloadRef,
};
use bulkhead_proto::{Delta, NodeView, PodRef, SharedDiff, Snapshot};
use enforcer_common::{DefaultKey, PolicyKey, PolicyValue};
use tokio::sync::watch;

use super::NodeAssignment;

/// Deltas kept per node unless configured otherwise.
pub const DEFAULT_HISTORY: usize = 64;

/// Shared handle to the sync state (cheap to clone).
#[derive(Clone)]
pub struct SyncHub {
    inner: Arc<Mutex<Hub>>,
}

pub(super) struct Hub {
    pub(super) epoch: u64,
    pub(super) revision: u64,
    history: usize,
    policy: BTreeMap<PolicyEntryKey, PolicyValue>,
    defaults: BTreeMap<DefaultKey, PolicyValue>,
    addresses: BTreeMap<AddrPrefix, u32>,
    rules: BTreeMap<u32, RuleRef>,
    workloads: BTreeMap<WorkloadRef, CompiledWorkload>,
    pub(super) nodes: BTreeMap<String, Node>,
    pub(super) acked: BTreeMap<String, u64>,
    pub(super) rejected: BTreeMap<String, (u64, String)>,
    /// Node -> number of open sync streams.
    pub(super) connected: BTreeMap<String, usize>,
    /// Whether this hub serves (false on a standby controller: streams end, new ones are
    /// refused, both with UNAVAILABLE).
    pub(super) serving: watch::Sender<bool>,
}

pub(super) struct Node {
    /// The revision at which the node's view last changed (0: none yet).
    pub(super) revision: u64,
    /// The node's part of the last assignment.
    placed: BTreeMap<WorkloadRef, String>,
    pods: BTreeMap<PodRef, u32>,
    /// Identity -> number of the node's pods with it.
    identities: BTreeMap<u32, usize>,
    /// Deltas in revision order; `history[i].revision == history[i + 1].previous_revision`.
    pub(super) history: VecDeque<Arc<Delta>>,
    pub(super) notify: watch::Sender<u64>,
}

impl Node {
    fn new(revision: u64) -> Self {
        Node {
            revision,
            placed: BTreeMap::new(),
            pods: BTreeMap::new(),
            identities: BTreeMap::new(),
            history: VecDeque::new(),
            notify: watch::Sender::new(revision),
        }
    }
}

/// What a stream sends next to a node that holds `held`.
pub(super) enum Catchup {
    /// Nothing (up to date, or nothing published yet).
    Nothing,
    /// These deltas, in order.
    Deltas(Vec<Arc<Delta>>),
    /// A snapshot.
    Snapshot(Box<Snapshot>),
}

/// Linear diff of two sorted maps.
fn merge_diff<K: Ord + Clone, V: PartialEq + Clone>(
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
) -> MapDiff<K, V> {
    let mut d = MapDiff::default();
    let (mut a, mut b) = (old.iter().peekable(), new.iter().peekable());
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some((k, _)), None) => {
                d.removals.push((*k).clone());
                a.next();
            }
            (None, Some((k, v))) => {
                d.upserts.push(((*k).clone(), (*v).clone()));
                b.next();
            }
            (Some((ka, va)), Some((kb, vb))) => match ka.cmp(kb) {
                std::cmp::Ordering::Less => {
                    d.removals.push((*ka).clone());
                    a.next();
                }
                std::cmp::Ordering::Greater => {
                    d.upserts.push(((*kb).clone(), (*vb).clone()));
                    b.next();
                }
                std::cmp::Ordering::Equal => {
                    if va != vb {
                        d.upserts.push(((*kb).clone(), (*vb).clone()));
                    }
                    a.next();
                    b.next();
                }
            },
        }
    }
    d
}

fn policy_range(
    map: &BTreeMap<PolicyEntryKey, PolicyValue>,
    identity: u32,
) -> impl Iterator<Item = (&PolicyEntryKey, &PolicyValue)> {
    let lo = PolicyEntryKey {
        key: PolicyKey {
            local_identity: identity,
            peer_identity: 0,
            direction: 0,
            protocol: 0,
            port_be: [0; 2],
        },
        prefix_len: 0,
    };
    let end = match identity.checked_add(1) {
        Some(next) => Bound::Excluded(PolicyEntryKey {
            key: PolicyKey {
                local_identity: next,
                ..lo.key
            },
            prefix_len: 0,
        }),
        None => Bound::Unbounded,
    };
    map.range((Bound::Included(lo), end))
}

fn defaults_range(
    map: &BTreeMap<DefaultKey, PolicyValue>,
    identity: u32,
) -> impl Iterator<Item = (&DefaultKey, &PolicyValue)> {
    let key = |direction| DefaultKey {
        local_identity: identity,
        direction,
        _pad: [0; 3],
    };
    map.range(key(0)..=key(u8::MAX))
}

/// Per local identity: the policy and defaults changes of one update.
#[derive(Default)]
struct IdentityDiff {
    policy: MapDiff<PolicyEntryKey, PolicyValue>,
    defaults: MapDiff<DefaultKey, PolicyValue>,
}

fn group_by_identity(
    policy: MapDiff<PolicyEntryKey, PolicyValue>,
    defaults: MapDiff<DefaultKey, PolicyValue>,
) -> HashMap<u32, IdentityDiff> {
    let mut by: HashMap<u32, IdentityDiff> = HashMap::new();
    for (k, v) in policy.upserts {
        by.entry(k.key.local_identity)
            .or_default()
            .policy
            .upserts
            .push((k, v));
    }
    for k in policy.removals {
        by.entry(k.key.local_identity)
            .or_default()
            .policy
            .removals
            .push(k);
    }
    for (k, v) in defaults.upserts {
        by.entry(k.local_identity)
            .or_default()
            .defaults
            .upserts
            .push((k, v));
    }
    for k in defaults.removals {
        by.entry(k.local_identity)
            .or_default()
            .defaults
            .removals
            .push(k);
    }
    by
}

/// The maps an update replaced (dropped off the publishing path).
struct Old {
    _policy: BTreeMap<PolicyEntryKey, PolicyValue>,
    _defaults: BTreeMap<DefaultKey, PolicyValue>,
    _addresses: BTreeMap<AddrPrefix, u32>,
    _rules: BTreeMap<u32, RuleRef>,
    _workloads: BTreeMap<WorkloadRef, CompiledWorkload>,
}

/// Workloads whose identity differs between `old` and `new` (or that are in only one).
fn relabeled<'a>(
    old: &'a BTreeMap<WorkloadRef, CompiledWorkload>,
    new: &'a BTreeMap<WorkloadRef, CompiledWorkload>,
) -> HashSet<&'a WorkloadRef> {
    let mut out = HashSet::new();
    let (mut a, mut b) = (old.iter().peekable(), new.iter().peekable());
    loop {
        let (key, advance_old, advance_new) = match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some((k, _)), None) => (*k, true, false),
            (None, Some((k, _))) => (*k, false, true),
            (Some((ka, va)), Some((kb, vb))) => match ka.cmp(kb) {
                std::cmp::Ordering::Less => (*ka, true, false),
                std::cmp::Ordering::Greater => (*kb, false, true),
                std::cmp::Ordering::Equal => {
                    if va.identity != vb.identity {
                        out.insert(*kb);
                    }
                    a.next();
                    b.next();
                    continue;
                }
            },
        };
        out.insert(key);
        if advance_old {
            a.next();
        }
        if advance_new {
            b.next();
        }
    }
    out
}

fn new_epoch() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    std::collections::hash_map::RandomState::new().hash_one(nanos) | 1
}

impl Default for SyncHub {
    fn default() -> Self {
        Self::new(DEFAULT_HISTORY)
    }
}

impl SyncHub {
    /// An empty hub (revision 0: nothing published) keeping `history` deltas per node, with a
    /// fresh random epoch.
    pub fn new(history: usize) -> Self {
        SyncHub {
            inner: Arc::new(Mutex::new(Hub {
                epoch: new_epoch(),
                revision: 0,
                history: history.max(1),
                policy: BTreeMap::new(),
                defaults: BTreeMap::new(),
                addresses: BTreeMap::new(),
                rules: BTreeMap::new(),
                workloads: BTreeMap::new(),
                nodes: BTreeMap::new(),
                acked: BTreeMap::new(),
                rejected: BTreeMap::new(),
                connected: BTreeMap::new(),
                serving: watch::Sender::new(true),
            })),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Hub> {
        // A panic while holding the lock leaves consistent data (every mutation completes
        // before anything can panic), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This controller instance's epoch: revisions of other epochs are unknown to it.
    pub fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// The latest published revision.
    pub fn revision(&self) -> u64 {
        self.lock().revision
    }

    /// Node -> the revision its current view has.
    pub fn desired(&self) -> BTreeMap<String, u64> {
        let hub = self.lock();
        hub.nodes
            .iter()
            .map(|(n, node)| (n.clone(), node.revision))
            .collect()
    }

    /// Node -> the latest revision its enforcer acknowledged. A node is realized when this equals
    /// its [`desired`](Self::desired) revision.
    pub fn realized(&self) -> BTreeMap<String, u64> {
        self.lock().acked.clone()
    }

    /// Records an acknowledgement as an enforcer's stream would (tests of what counts acks).
    #[cfg(test)]
    pub(crate) fn acknowledge_for_test(&self, node: &str, revision: u64) {
        let mut hub = self.lock();
        let acked = hub.acked.entry(node.to_owned()).or_default();
        *acked = (*acked).max(revision);
    }

    /// Node -> the last revision its enforcer rejected, and why (until it acknowledges a later
    /// one).
    pub fn rejected(&self) -> BTreeMap<String, (u64, String)> {
        self.lock().rejected.clone()
    }

    /// Nodes with an open sync stream, and how many each has.
    pub fn connected(&self) -> BTreeMap<String, usize> {
        self.lock().connected.clone()
    }

    /// Starts or stops serving. A hub serves from creation; a standby controller's hub does
    /// not: its open streams end and new ones are refused, with UNAVAILABLE, so enforcers
    /// retry until they reach the leader.
    pub fn set_serving(&self, serving: bool) {
        self.lock().serving.send_replace(serving);
    }

    /// Whether the hub serves.
    pub fn serving(&self) -> bool {
        *self.lock().serving.borrow()
    }

    /// The view of `node` now (its revision and contents).
    pub fn view(&self, node: &str) -> Option<Snapshot> {
        let hub = self.lock();
        hub.nodes.get(node).map(|n| hub.snapshot(n))
    }

    /// Publishes `state` with pods placed by `assignment`: one new revision, a delta for each
    /// node whose view changed. Returns the revision (unchanged when no view changed).
    /// Workloads of `state` that `assignment` places nowhere are on no node yet; placed workloads
    /// missing from `state` are ignored.
    pub fn update(&self, state: CompiledState, assignment: &NodeAssignment) -> u64 {
        let (revision, old) = self.lock().update(state, assignment);
        // The previous maps are large: free them off the publishing path.
        std::thread::spawn(move || drop(old));
        revision
    }
}

impl Hub {
    fn update(&mut self, state: CompiledState, assignment: &NodeAssignment) -> (u64, Old) {
        let revision = self.revision + 1;
        let shared = Arc::new(SharedDiff {
            addresses: merge_diff(&self.addresses, &state.addresses),
            rules: merge_diff(&self.rules, &state.rules),
        });
        let shared_changed = !shared.addresses.is_empty() || !shared.rules.is_empty();
        let by_identity = group_by_identity(
            merge_diff(&self.policy, &state.policy),
            merge_diff(&self.defaults, &state.defaults),
        );
        // Workloads whose identity changed (or that appeared or went): their nodes' pods change.
        let relabeled = relabeled(&self.workloads, &state.workloads);
        for name in assignment.keys() {
            if !self.nodes.contains_key(name) {
                self.nodes.insert(name.clone(), Node::new(0));
            }
        }
        let empty = BTreeMap::new();
        let mut changed = false;
        for (name, node) in &mut self.nodes {
            let placed = assignment.get(name).unwrap_or(&empty);
            let same_pods = node.placed == *placed
                && (relabeled.is_empty() || !placed.keys().any(|w| relabeled.contains(w)));
            let mut delta = Delta {
                epoch: self.epoch,
                revision,
                previous_revision: node.revision,
                policy: MapDiff::default(),
                defaults: MapDiff::default(),
                workloads: MapDiff::default(),
                shared: shared.clone(),
            };
            let mut identities = None;
            if !same_pods {
                let pods: BTreeMap<PodRef, u32> = placed
                    .iter()
                    .filter_map(|(w, uid)| {
                        let compiled = state.workloads.get(w)?;
                        let pod = PodRef {
                            namespace: w.namespace.clone(),
                            name: w.name.clone(),
                            uid: uid.clone(),
                        };
                        Some((pod, compiled.identity))
                    })
                    .collect();
                let mut ids: BTreeMap<u32, usize> = BTreeMap::new();
                for id in pods.values() {
                    *ids.entry(*id).or_default() += 1;
                }
                delta.workloads = merge_diff(&node.pods, &pods);
                node.pods = pods;
                node.placed = placed.clone();
                identities = Some(ids);
            }
            let new_ids = identities.as_ref().unwrap_or(&node.identities);
            for id in node.identities.keys() {
                if !new_ids.contains_key(id) {
                    let p = policy_range(&self.policy, *id).map(|(k, _)| *k);
                    delta.policy.removals.extend(p);
                    let d = defaults_range(&self.defaults, *id).map(|(k, _)| *k);
                    delta.defaults.removals.extend(d);
                }
            }
            for id in new_ids.keys() {
                if node.identities.contains_key(id) {
                    if let Some(diff) = by_identity.get(id) {
                        delta.policy.upserts.extend_from_slice(&diff.policy.upserts);
                        delta
                            .policy
                            .removals
                            .extend_from_slice(&diff.policy.removals);
                        delta
                            .defaults
                            .upserts
                            .extend_from_slice(&diff.defaults.upserts);
                        delta
                            .defaults
                            .removals
                            .extend_from_slice(&diff.defaults.removals);
                    }
                } else {
                    let p = policy_range(&state.policy, *id).map(|(k, v)| (*k, *v));
                    delta.policy.upserts.extend(p);
                    let d = defaults_range(&state.defaults, *id).map(|(k, v)| (*k, *v));
                    delta.defaults.upserts.extend(d);
                }
            }
            if let Some(ids) = identities {
                node.identities = ids;
            }
            let node_changed = !delta.policy.is_empty()
                || !delta.defaults.is_empty()
                || !delta.workloads.is_empty();
            if !(node_changed || shared_changed) && node.revision != 0 {
                continue;
            }
            changed = true;
            if node.revision != 0 {
                if node.history.len() == self.history {
                    node.history.pop_front();
                }
                node.history.push_back(Arc::new(delta));
            }
            node.revision = revision;
        }
        drop(relabeled);
        let old = Old {
            _policy: std::mem::replace(&mut self.policy, state.policy),
            _defaults: std::mem::replace(&mut self.defaults, state.defaults),
            _addresses: std::mem::replace(&mut self.addresses, state.addresses),
            _rules: std::mem::replace(&mut self.rules, state.rules),
            _workloads: std::mem::replace(&mut self.workloads, state.workloads),
        };
        if changed {
            self.revision = revision;
            for node in self.nodes.values() {
                if node.revision == revision {
                    node.notify.send_replace(revision);
                }
            }
        }
        (self.revision, old)
    }

    pub(super) fn snapshot(&self, node: &Node) -> Snapshot {
        let mut view = NodeView {
            addresses: self.addresses.clone(),
            rules: self.rules.clone(),
            workloads: node.pods.clone(),
            ..NodeView::default()
        };
        for id in node.identities.keys() {
            view.policy.extend(policy_range(&self.policy, *id));
            view.defaults.extend(defaults_range(&self.defaults, *id));
        }
        Snapshot {
            epoch: self.epoch,
            revision: node.revision,
            view,
        }
    }

    /// The node's entry, created (with the current shared tables and no pods) if unknown.
    pub(super) fn node_entry(&mut self, name: &str) -> &mut Node {
        let revision = self.revision;
        self.nodes
            .entry(name.to_owned())
            .or_insert_with(|| Node::new(revision))
    }

    /// What a node holding `(epoch, held)` needs to reach its current view.
    pub(super) fn catchup(&self, name: &str, epoch: u64, held: u64) -> Catchup {
        let Some(node) = self.nodes.get(name) else {
            return Catchup::Nothing;
        };
        if node.revision == 0 {
            return Catchup::Nothing;
        }
        if epoch == self.epoch && held != 0 {
            if held == node.revision {
                return Catchup::Nothing;
            }
            if let Some(i) = node
                .history
                .iter()
                .position(|d| d.previous_revision == held)
            {
                return Catchup::Deltas(node.history.iter().skip(i).cloned().collect());
            }
        }
        Catchup::Snapshot(Box::new(self.snapshot(node)))
    }
}
