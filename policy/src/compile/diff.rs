//! The difference between two compiled states: what the enforcer's map writer applies to the
//! kernel maps (design.md: "diff against the previous state -> kernel maps").
//!
//! Apply `upserts` first, then `removals`: during the update a lookup sees either the old or the
//! new entry of a key, never a hole where both states had one.

use std::collections::BTreeMap;

use enforcer_common::{DefaultKey, PolicyValue};

use super::{AddrPrefix, CompiledState, CompiledWorkload, PolicyEntryKey};
use crate::model::WorkloadRef;

/// Changes of one map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapDiff<K, V> {
    /// Keys that are new or whose value changed, with the new value.
    pub upserts: Vec<(K, V)>,
    /// Keys that no longer exist.
    pub removals: Vec<K>,
}

impl<K, V> Default for MapDiff<K, V> {
    fn default() -> Self {
        MapDiff {
            upserts: Vec::new(),
            removals: Vec::new(),
        }
    }
}

impl<K, V> MapDiff<K, V> {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.removals.is_empty()
    }
}

/// Changes of every map of a [`CompiledState`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StateDiff {
    /// `POLICY` trie.
    pub policy: MapDiff<PolicyEntryKey, PolicyValue>,
    /// `DEFAULTS`.
    pub defaults: MapDiff<DefaultKey, PolicyValue>,
    /// `ADDRESSES` trie.
    pub addresses: MapDiff<AddrPrefix, u32>,
    /// Workloads (the `WORKLOADS` map is keyed by the cgroup's inode, which the enforcer
    /// resolves from `CompiledWorkload::cgroup`).
    pub workloads: MapDiff<WorkloadRef, CompiledWorkload>,
}

impl StateDiff {
    /// Whether the two states have equal map contents.
    pub fn is_empty(&self) -> bool {
        self.policy.is_empty()
            && self.defaults.is_empty()
            && self.addresses.is_empty()
            && self.workloads.is_empty()
    }
}

fn map_diff<K: Ord + Clone, V: PartialEq + Clone>(
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
) -> MapDiff<K, V> {
    let mut d = MapDiff::default();
    for (k, v) in new {
        if old.get(k) != Some(v) {
            d.upserts.push((k.clone(), v.clone()));
        }
    }
    for k in old.keys() {
        if !new.contains_key(k) {
            d.removals.push(k.clone());
        }
    }
    d
}

impl CompiledState {
    /// What turns `previous` into `self`.
    pub fn diff(&self, previous: &CompiledState) -> StateDiff {
        StateDiff {
            policy: map_diff(&previous.policy, &self.policy),
            defaults: map_diff(&previous.defaults, &self.defaults),
            addresses: map_diff(&previous.addresses, &self.addresses),
            workloads: map_diff(&previous.workloads, &self.workloads),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{Inventory, PolicySet};

    #[test]
    fn diff_turns_the_old_state_into_the_new() {
        let inv = Inventory::from_yaml_str(
            "inv.yaml",
            "namespaces: [{name: x}]\nworkloads: [{namespace: x, name: a, ips: [10.0.0.1]}, {namespace: x, name: b, ips: [10.0.0.2]}]\n",
        )
        .unwrap();
        let p1 = PolicySet::from_yaml_str(
            "p.yaml",
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np, namespace: x}\nspec: {podSelector: {}, ingress: [{ports: [{port: 80}]}]}\n",
        )
        .unwrap();
        let p2 = PolicySet::from_yaml_str(
            "p.yaml",
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np, namespace: x}\nspec: {podSelector: {}, ingress: [{ports: [{port: 81}]}], egress: [{ports: [{port: 53}]}]}\n",
        )
        .unwrap();
        let at = "2026-11-27T12:00:00Z".parse().unwrap();
        let mut c = super::super::Compiler::default();
        let s1 = c.compile(&p1, &inv, at).unwrap();
        let s2 = c.compile(&p2, &inv, at).unwrap();
        let d = s2.diff(&s1);
        assert!(!d.policy.removals.is_empty() && !d.policy.upserts.is_empty());
        assert_eq!(d.defaults.upserts.len(), 1, "egress isolation is new");
        assert!(d.addresses.is_empty() && d.workloads.is_empty());
        let mut applied = s1.clone();
        for (k, v) in &d.policy.upserts {
            applied.policy.insert(*k, *v);
        }
        for k in &d.policy.removals {
            applied.policy.remove(k);
        }
        for (k, v) in &d.defaults.upserts {
            applied.defaults.insert(*k, *v);
        }
        for k in &d.defaults.removals {
            applied.defaults.remove(k);
        }
        assert_eq!(applied.policy, s2.policy);
        assert_eq!(applied.defaults, s2.defaults);
        assert!(s2.diff(&s2).is_empty());
    }
}
