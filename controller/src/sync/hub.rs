//! The hub: current state, per-node views and histories, acknowledgements.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::BuildHasher;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use bulkhead_policy::{AddrPrefix, CompiledState, MapDiff, PolicyEntryKey, RuleRef};
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
    pub(super) nodes: BTreeMap<String, Node>,
    pub(super) acked: BTreeMap<String, u64>,
    pub(super) rejected: BTreeMap<String, (u64, String)>,
}

pub(super) struct Node {
    /// The revision at which the node's view last changed (0: none yet).
    pub(super) revision: u64,
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
                nodes: BTreeMap::new(),
                acked: BTreeMap::new(),
                rejected: BTreeMap::new(),
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

    /// Node -> the last revision its enforcer rejected, and why.
    pub fn rejected(&self) -> BTreeMap<String, (u64, String)> {
        self.lock().rejected.clone()
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
    pub fn update(&self, state: &CompiledState, assignment: &NodeAssignment) -> u64 {
        self.lock().update(state, assignment)
    }
}

impl Hub {
    fn update(&mut self, state: &CompiledState, assignment: &NodeAssignment) -> u64 {
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
        let empty = BTreeMap::new();
        let names: BTreeSet<&String> = self.nodes.keys().chain(assignment.keys()).collect();
        let names: Vec<String> = names.into_iter().cloned().collect();
        let mut changed = false;
        for name in names {
            let placed = assignment.get(&name).unwrap_or(&empty);
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
            let node = self.nodes.entry(name).or_insert_with(|| Node::new(0));
            let mut identities: BTreeMap<u32, usize> = BTreeMap::new();
            for id in pods.values() {
                *identities.entry(*id).or_default() += 1;
            }
            let mut delta = Delta {
                epoch: self.epoch,
                revision,
                previous_revision: node.revision,
                policy: MapDiff::default(),
                defaults: MapDiff::default(),
                workloads: merge_diff(&node.pods, &pods),
                shared: shared.clone(),
            };
            for id in node.identities.keys() {
                if !identities.contains_key(id) {
                    let p = policy_range(&self.policy, *id).map(|(k, _)| *k);
                    delta.policy.removals.extend(p);
                    let d = defaults_range(&self.defaults, *id).map(|(k, _)| *k);
                    delta.defaults.removals.extend(d);
                }
            }
            for id in identities.keys() {
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
            node.pods = pods;
            node.identities = identities;
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
        self.policy.clone_from(&state.policy);
        self.defaults.clone_from(&state.defaults);
        self.addresses.clone_from(&state.addresses);
        self.rules.clone_from(&state.rules);
        if changed {
            self.revision = revision;
            for node in self.nodes.values() {
                if node.revision == revision {
                    node.notify.send_replace(revision);
                }
            }
        }
        self.revision
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
