//! The sync messages as domain types: what a node's view holds, and how a delta changes it.

use std::collections::BTreeMap;
use std::sync::Arc;

use bulkhead_policy::{AddrPrefix, MapDiff, PolicyEntryKey, RuleRef};
use enforcer_common::{DefaultKey, PolicyValue};

use crate::error::{Problem, WireError};

/// A pod as the controller knows it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `metadata.uid`: what the enforcer finds the pod's cgroup by.
    pub uid: String,
}

/// What one node enforces: the entries of its pods' identities, the whole address table, its
/// pods and the rule table. Times in policy values are Unix-epoch nanoseconds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeView {
    /// `POLICY` trie entries whose local identity is one of the node's pods'.
    pub policy: BTreeMap<PolicyEntryKey, PolicyValue>,
    /// `DEFAULTS` entries of those identities.
    pub defaults: BTreeMap<DefaultKey, PolicyValue>,
    /// The `ADDRESSES` trie.
    pub addresses: BTreeMap<AddrPrefix, u32>,
    /// The node's pods and their identity.
    pub workloads: BTreeMap<PodRef, u32>,
    /// Rule id -> rule (attribution of verdicts).
    pub rules: BTreeMap<u32, RuleRef>,
}

/// A whole view.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// The controller instance's epoch (revisions of another epoch are unknown).
    pub epoch: u64,
    /// Revision (> 0).
    pub revision: u64,
    /// The view.
    pub view: NodeView,
}

/// The part of a delta that every node receives alike.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SharedDiff {
    /// Address table changes.
    pub addresses: MapDiff<AddrPrefix, u32>,
    /// Rule table changes.
    pub rules: MapDiff<u32, RuleRef>,
}

/// What turns the view at `previous_revision` into the view at `revision`.
#[derive(Clone, Debug, PartialEq)]
pub struct Delta {
    /// The controller instance's epoch.
    pub epoch: u64,
    /// The new revision.
    pub revision: u64,
    /// The revision this delta applies to (`< revision`).
    pub previous_revision: u64,
    /// Policy entry changes.
    pub policy: MapDiff<PolicyEntryKey, PolicyValue>,
    /// Default entry changes.
    pub defaults: MapDiff<DefaultKey, PolicyValue>,
    /// Pod changes.
    pub workloads: MapDiff<PodRef, u32>,
    /// Address and rule changes (shared between the nodes' deltas of one revision).
    pub shared: Arc<SharedDiff>,
}

/// Controller -> enforcer.
#[derive(Clone, Debug, PartialEq)]
pub enum ControllerMsg {
    /// A whole view.
    Snapshot(Snapshot),
    /// A change of the view.
    Delta(Delta),
}

/// Enforcer -> controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EnforcerMsg {
    /// First message: who the enforcer is and what it holds (revision 0: nothing).
    Hello {
        /// Node name.
        node_name: String,
        /// Epoch of the held state.
        held_epoch: u64,
        /// Held revision.
        held_revision: u64,
    },
    /// `revision` was applied.
    Ack {
        /// Revision.
        revision: u64,
    },
    /// The message of `revision` was rejected; the previous state is kept.
    Nack {
        /// Revision.
        revision: u64,
        /// Why.
        error: String,
    },
}

impl Delta {
    /// Whether the delta changes nothing.
    pub fn is_empty(&self) -> bool {
        self.policy.is_empty()
            && self.defaults.is_empty()
            && self.workloads.is_empty()
            && self.shared.addresses.is_empty()
            && self.shared.rules.is_empty()
    }
}

fn check_removals<K: Ord, V>(
    map: &BTreeMap<K, V>,
    diff: &MapDiff<K, V>,
    field: &str,
) -> Result<(), WireError> {
    match diff.removals.iter().position(|k| !map.contains_key(k)) {
        Some(i) => Err(WireError::new(
            "Delta",
            format!("{field}[{i}]"),
            Problem::NotHeld,
        )),
        None => Ok(()),
    }
}

fn apply_diff<K: Ord + Clone, V: Clone>(map: &mut BTreeMap<K, V>, diff: &MapDiff<K, V>) {
    map.extend(diff.upserts.iter().cloned());
    for k in &diff.removals {
        map.remove(k);
    }
}

impl NodeView {
    /// Applies `delta` (upserts, then deletes) if every delete names a held key; otherwise
    /// changes nothing. The caller checks the revisions.
    pub fn apply(&mut self, delta: &Delta) -> Result<(), WireError> {
        check_removals(&self.policy, &delta.policy, "policy_deletes")?;
        check_removals(&self.defaults, &delta.defaults, "defaults_deletes")?;
        check_removals(&self.workloads, &delta.workloads, "workload_deletes")?;
        check_removals(&self.addresses, &delta.shared.addresses, "address_deletes")?;
        check_removals(&self.rules, &delta.shared.rules, "rule_deletes")?;
        apply_diff(&mut self.policy, &delta.policy);
        apply_diff(&mut self.defaults, &delta.defaults);
        apply_diff(&mut self.workloads, &delta.workloads);
        apply_diff(&mut self.addresses, &delta.shared.addresses);
        apply_diff(&mut self.rules, &delta.shared.rules);
        Ok(())
    }
}
