//! [`Incremental`]: a compiler that owns its inputs and the current [`CompiledState`], takes one
//! change at a time and returns only what changed ([`StateDiff`]), patching the held state in
//! place.
//!
//! A change recomputes only what it touches:
//! - a policy apply or removal: the `(local identity, direction)` pairs its subject selects,
//!   before and after the change (its selectors are evaluated once, cached per distinct
//!   selector);
//! - a workload change (relabel, new or removed workload, new addresses): the workload's entry
//!   and address entries; when its identity appears (a label set no workload had) or disappears,
//!   every cached selector is evaluated on that one label set, and the local identities whose
//!   rules' peer lists gained or lost it are resolved again (plus, for egress rules with a named
//!   port and no peer list, which name every workload identity, their subjects).
//!
//! Changes the fast paths do not cover fall back to a full compile of the changed inputs and a
//! diff against the held state (same result, full cost): a policy change that adds or drops a
//! policy CIDR (the address trie and composite identities change), a workload change involving
//! an address inside a policy CIDR (composite identities), a namespace relabel (every identity
//! of the namespace changes), and a move in time ([`Incremental::set_time`]).
//!
//! The held state is always equal to a fresh [`Compiler::compile`] of the held inputs with the
//! same allocation table; the tests check it after random sequences of changes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use crate::identity::LabelSet;
use crate::model::{ObjectKey, PolicyObject, Workload};
use crate::validate;

use super::*;

/// A compiler holding its inputs and its output; see the module documentation.
pub struct Incremental {
    compiler: Compiler,
    policies: PolicySet,
    inventory: Inventory,
    at: Timestamp,
    state: CompiledState,
    live: Live,
    full_compiles: usize,
}

/// `(label set, peer identity)`: only the entries of that peer need resolving again.
type Partial = BTreeSet<(usize, u32)>;

/// The model of the held state plus the reverse indices the changes need.
struct Live {
    m: Model,
    slot_of: HashMap<ObjectKey, usize>,
    free_slots: Vec<usize>,
    /// Subject cache key -> policy slots using it.
    subject_users: HashMap<String, BTreeSet<usize>>,
    /// Peer-list cache key -> policy slots using it.
    peer_users: HashMap<String, BTreeSet<usize>>,
    /// Slots of policies with an egress rule that has a named port and no peer list.
    named_any: BTreeSet<usize>,
    /// Policy CIDR (and `except` CIDR) -> number of policies naming it.
    cidr_refs: HashMap<IpNet, usize>,
    /// Workloads per label set (0: retired; its index is kept and revived when it returns).
    members: Vec<usize>,
    ls_by_key: HashMap<Arc<str>, usize>,
    ip_owner: HashMap<IpAddr, WorkloadRef>,
    cgroup_owner: HashMap<String, WorkloadRef>,
}

/// The distinct CIDRs a policy names.
fn policy_cidrs(p: &ir::Policy) -> BTreeSet<IpNet> {
    let mut out = BTreeSet::new();
    for r in &p.rules {
        for peer in r.peers.iter().flatten() {
            if let ir::Peer::Cidr { net, except } = peer {
                out.insert(*net);
                out.extend(except.iter().copied());
            }
        }
    }
    out
}

/// Whether a policy has an egress rule with a named port and no peer list (it names every
/// workload identity as a peer).
fn is_named_any(p: &ir::Policy) -> bool {
    p.rules.iter().any(|r| {
        r.direction == Direction::Egress
            && r.peers.is_none()
            && r.ports
                .iter()
                .flatten()
                .any(|x| matches!(x, Port::Named { .. }))
    })
}

fn rule_refs(p: &ir::Policy) -> impl Iterator<Item = (u32, &RuleRef)> {
    p.rules
        .iter()
        .map(|r| (r.rule_id, &r.rule))
        .chain(p.isolates.iter().flatten().map(|(r, id)| (*id, r)))
}

fn next_change(policies: &[&Arc<ir::Policy>], at: Timestamp) -> Option<Timestamp> {
    policies
        .iter()
        .flat_map(|p| p.rules.iter())
        .flat_map(|r| [r.not_before, r.expires_at])
        .flatten()
        .filter(|t| *t > at)
        .min()
}

fn insert_sorted(v: &mut Vec<usize>, x: usize) {
    if let Err(i) = v.binary_search(&x) {
        v.insert(i, x);
    }
}

fn remove_sorted(v: &mut Vec<usize>, x: usize) {
    if let Ok(i) = v.binary_search(&x) {
        v.remove(i);
    }
}

fn no_workload(r: &WorkloadRef) -> Error {
    Error::invalid(
        "inventory",
        &format!("Workload {r}"),
        "name",
        "no such workload",
    )
}

impl Live {
    fn new(m: Model, inventory: &Inventory) -> Live {
        let mut live = Live {
            slot_of: HashMap::new(),
            free_slots: Vec::new(),
            subject_users: HashMap::new(),
            peer_users: HashMap::new(),
            named_any: BTreeSet::new(),
            cidr_refs: HashMap::new(),
            members: vec![0; m.uni.label_sets.len()],
            ls_by_key: m
                .uni
                .ls_keys
                .iter()
                .enumerate()
                .map(|(i, k)| (k.clone(), i))
                .collect(),
            ip_owner: HashMap::new(),
            cgroup_owner: HashMap::new(),
            m,
        };
        for (slot, p) in live.m.lowered.iter().enumerate() {
            live.slot_of.insert(p.key.clone(), slot);
            let (sk, pks) = &live.m.keys[slot];
            live.subject_users
                .entry(sk.clone())
                .or_default()
                .insert(slot);
            for k in pks.iter().flatten() {
                live.peer_users.entry(k.clone()).or_default().insert(slot);
            }
            if is_named_any(p) {
                live.named_any.insert(slot);
            }
            for c in policy_cidrs(p) {
                *live.cidr_refs.entry(c).or_default() += 1;
            }
        }
        for (ls, _, _) in live.m.uni.workloads.values() {
            live.members[*ls] += 1;
        }
        for w in &inventory.workloads {
            for ip in &w.ips {
                live.ip_owner.insert(*ip, w.reference());
            }
            if let Some(cg) = &w.cgroup {
                live.cgroup_owner.insert(cg.clone(), w.reference());
            }
        }
        live
    }

    /// Label-set indices of the live identities in `ids`.
    fn locals_of(&self, ids: &[u32], out: &mut BTreeSet<usize>) {
        out.extend(ids.iter().filter_map(|id| self.m.uni.ls_index.get(id)));
    }

    /// Label sets selected by the subjects of `slots`.
    fn subjects_of<'a>(
        &self,
        slots: impl IntoIterator<Item = &'a usize>,
        out: &mut BTreeSet<usize>,
    ) {
        for slot in slots {
            if let Some((_, ids)) = self.m.uni.subject_cache.get(&self.m.keys[*slot].0) {
                self.locals_of(ids, out);
            }
        }
    }

    /// Replaces the result of peer list `key` and the rule peers of the policies using it.
    fn set_peer_result(&mut self, key: &str, ids: Vec<u32>) {
        let h = hash_of(&ids);
        let ids = Arc::new(ids);
        if let Some(e) = self.m.uni.peer_cache.get_mut(key) {
            e.1 = ids.clone();
            e.2 = h;
        }
        for slot in self.peer_users.get(key).into_iter().flatten() {
            for (ri, k) in self.m.keys[*slot].1.iter().enumerate() {
                if k.as_deref() == Some(key) {
                    self.m.peer_sets[*slot][ri] = Some(ids.clone());
                }
            }
        }
    }

    /// Label set `ls` gained its first workload: it becomes a peer and a local identity. Adds
    /// the label sets whose local inputs changed to `affected`.
    fn born(&mut self, ls: usize, affected: &mut BTreeSet<usize>, partial: &mut Partial) {
        let uni = &mut self.m.uni;
        let id = uni.ls_ids[ls];
        uni.ls_index.insert(id, ls);
        uni.peer_kinds.insert(id, PeerKind::Workload(ls));
        let set = uni.label_sets[ls].clone();
        if let Some(n) = uni.namespaces.get_mut(&set.namespace) {
            insert_sorted(&mut n.1, ls);
        }
        affected.insert(ls);
        let mut pols = Vec::new();
        for (key, (subject, ids)) in uni.subject_cache.iter_mut() {
            if Universe::subject_selects(subject, &set) {
                let v = Arc::make_mut(ids);
                if let Err(i) = v.binary_search(&id) {
                    v.insert(i, id);
                }
                pols.extend(self.subject_users.get(key).into_iter().flatten().copied());
            }
        }
        pols.sort_unstable();
        pols.dedup();
        self.m.by_local[ls] = pols;
        let changed: Vec<(String, Vec<u32>)> = uni
            .peer_cache
            .iter()
            .filter(|(_, (list, _, _))| uni.peers_select_id(list, id))
            .map(|(k, (_, ids, _))| {
                let mut v = (**ids).clone();
                if let Err(i) = v.binary_search(&id) {
                    v.insert(i, id);
                }
                (k.clone(), v)
            })
            .collect();
        self.peer_changes(changed, id, partial);
    }

    /// Label set `ls` lost its last workload: it is no identity any more. Adds the label sets
    /// whose local inputs changed to `affected`.
    fn retired(&mut self, ls: usize, affected: &mut BTreeSet<usize>, partial: &mut Partial) {
        let uni = &mut self.m.uni;
        let id = uni.ls_ids[ls];
        uni.ls_index.remove(&id);
        uni.peer_kinds.remove(&id);
        let ns = uni.label_sets[ls].namespace.clone();
        if let Some(n) = uni.namespaces.get_mut(&ns) {
            remove_sorted(&mut n.1, ls);
        }
        affected.insert(ls);
        for (_, ids) in uni.subject_cache.values_mut() {
            if let Ok(i) = ids.binary_search(&id) {
                Arc::make_mut(ids).remove(i);
            }
        }
        self.m.by_local[ls].clear();
        let changed: Vec<(String, Vec<u32>)> = uni
            .peer_cache
            .iter()
            .filter_map(|(k, (_, ids, _))| {
                let i = ids.binary_search(&id).ok()?;
                let mut v = (**ids).clone();
                v.remove(i);
                Some((k.clone(), v))
            })
            .collect();
        self.peer_changes(changed, id, partial);
    }

    /// Peer lists gained or lost identity `id`: the subjects of the policies using them get
    /// the entries of that one peer resolved again.
    fn peer_changes(&mut self, changed: Vec<(String, Vec<u32>)>, id: u32, partial: &mut Partial) {
        let mut users = BTreeSet::new();
        for (k, v) in changed {
            users.extend(self.peer_users.get(&k).into_iter().flatten().copied());
            self.set_peer_result(&k, v);
        }
        // Egress rules with a named port and no peer list name every workload identity.
        users.extend(self.named_any.iter().copied());
        let mut locals = BTreeSet::new();
        self.subjects_of(&users, &mut locals);
        partial.extend(locals.into_iter().map(|ls| (ls, id)));
    }
}

/// The first policy key of `(local, peer)`.
fn bound(local: u32, peer: u32) -> PolicyEntryKey {
    PolicyEntryKey {
        key: PolicyKey {
            local_identity: local,
            peer_identity: peer,
            direction: 0,
            protocol: 0,
            port_be: [0; 2],
        },
        prefix_len: 0,
    }
}

/// Makes the keys of `map` in `range` equal `entries` (all inside `range`), recording the
/// changes in `diff`.
fn patch(
    map: &mut BTreeMap<PolicyEntryKey, PolicyValue>,
    range: std::ops::Range<PolicyEntryKey>,
    entries: BTreeMap<PolicyEntryKey, PolicyValue>,
    diff: &mut StateDiff,
) {
    let stale: Vec<PolicyEntryKey> = map
        .range(range)
        .filter(|(k, _)| !entries.contains_key(k))
        .map(|(k, _)| *k)
        .collect();
    for k in stale {
        map.remove(&k);
        diff.policy.removals.push(k);
    }
    for (k, v) in entries {
        if map.insert(k, v) != Some(v) {
            diff.policy.upserts.push((k, v));
        }
    }
}

impl Incremental {
    /// Compiles `policies` over `inventory` at `at` with `compiler` (which keeps its allocation
    /// table) and holds the result.
    pub fn new(
        mut compiler: Compiler,
        policies: PolicySet,
        inventory: Inventory,
        at: Timestamp,
    ) -> Result<Incremental, Error> {
        let (state, model) = compiler.build(&policies, &inventory, at)?;
        let live = Live::new(model, &inventory);
        Ok(Incremental {
            compiler,
            policies,
            inventory,
            at,
            state,
            live,
            full_compiles: 1,
        })
    }

    /// The current compiled state.
    pub fn state(&self) -> &CompiledState {
        &self.state
    }

    /// The current policies.
    pub fn policies(&self) -> &PolicySet {
        &self.policies
    }

    /// The current inventory.
    pub fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    /// The instant the state is resolved at.
    pub fn at(&self) -> Timestamp {
        self.at
    }

    /// The allocation table (persist it to keep identities stable across restarts).
    pub fn table(&self) -> &AllocationTable {
        self.compiler.table()
    }

    /// How many full compiles this value has run (the first one, and every change that took
    /// the fallback); for tests and measurements.
    pub fn full_compiles(&self) -> usize {
        self.full_compiles
    }

    /// The compiler, inputs and state.
    pub fn into_parts(self) -> (Compiler, PolicySet, Inventory, CompiledState) {
        (self.compiler, self.policies, self.inventory, self.state)
    }

    /// Full compile of new inputs, diffed against the held state (the fallback).
    fn rebuild(
        &mut self,
        policies: PolicySet,
        inventory: Inventory,
        at: Timestamp,
    ) -> Result<StateDiff, Error> {
        let (state, model) = self.compiler.build(&policies, &inventory, at)?;
        let diff = state.diff(&self.state);
        self.live = Live::new(model, &inventory);
        self.state = state;
        self.policies = policies;
        self.inventory = inventory;
        self.at = at;
        self.full_compiles += 1;
        Ok(diff)
    }

    /// Resolves the state at another instant (full compile).
    pub fn set_time(&mut self, at: Timestamp) -> Result<StateDiff, Error> {
        self.rebuild(self.policies.clone(), self.inventory.clone(), at)
    }

    /// Recompiles everything from the held inputs (full compile); the diff is empty unless the
    /// held state was wrong.
    pub fn recompile(&mut self) -> Result<StateDiff, Error> {
        self.rebuild(self.policies.clone(), self.inventory.clone(), self.at)
    }

    /// Validates `object` and applies it (replacing an object with the same key), like
    /// [`PolicySet::apply`]. On error nothing changes.
    pub fn apply_policy(&mut self, source: &str, object: PolicyObject) -> Result<StateDiff, Error> {
        let lowered = Arc::new(validate::lower(source, &object)?);
        let key = object.key();
        let old = self.live.slot_of.get(&key).copied();
        if !self.cidrs_stay(old, Some(&lowered)) {
            let mut policies = self.policies.clone();
            policies.apply(source, object)?;
            return self.rebuild(policies, self.inventory.clone(), self.at);
        }
        // Rule ids: a collision with another policy's rule refuses the change.
        let own: BTreeSet<u32> = old
            .map(|s| {
                rule_refs(&self.live.m.lowered[s])
                    .map(|(id, _)| id)
                    .collect()
            })
            .unwrap_or_default();
        let mut mine: BTreeMap<u32, &RuleRef> = BTreeMap::new();
        for (id, r) in rule_refs(&lowered) {
            let other = match self.state.rules.get(&id) {
                Some(prev) if prev != r && !own.contains(&id) => Some(prev),
                _ => mine.get(&id).copied().filter(|prev| *prev != r),
            };
            if let Some(prev) = other {
                return Err(Error::RuleIdCollision {
                    id,
                    first: prev.to_string(),
                    second: r.to_string(),
                });
            }
            mine.insert(id, r);
        }
        self.policies.apply_lowered(source, object, lowered.clone());
        let mut affected = BTreeSet::new();
        let slot = match old {
            Some(s) => {
                self.unlink(s, &mut affected);
                s
            }
            None => {
                let s = self.live.free_slots.pop().unwrap_or_else(|| {
                    let m = &mut self.live.m;
                    m.lowered.push(lowered.clone());
                    m.keys.push(Default::default());
                    m.peer_sets.push(Vec::new());
                    m.lowered.len() - 1
                });
                self.live.slot_of.insert(key, s);
                s
            }
        };
        self.link(slot, lowered, &mut affected);
        self.finish_policy_change();
        Ok(self.recompute(affected, Partial::new(), StateDiff::default()))
    }

    /// Removes a policy object; a key that is not present changes nothing.
    pub fn remove_policy(&mut self, key: &ObjectKey) -> Result<StateDiff, Error> {
        let Some(slot) = self.live.slot_of.get(key).copied() else {
            return Ok(StateDiff::default());
        };
        if !self.cidrs_stay(Some(slot), None) {
            let mut policies = self.policies.clone();
            policies.remove(key);
            return self.rebuild(policies, self.inventory.clone(), self.at);
        }
        self.policies.remove(key);
        let mut affected = BTreeSet::new();
        self.unlink(slot, &mut affected);
        self.live.slot_of.remove(key);
        self.live.free_slots.push(slot);
        self.finish_policy_change();
        Ok(self.recompute(affected, Partial::new(), StateDiff::default()))
    }

    /// Whether replacing the policy in `old` by `new` keeps the set of policy CIDRs.
    fn cidrs_stay(&self, old: Option<usize>, new: Option<&ir::Policy>) -> bool {
        let old: BTreeSet<IpNet> = old
            .map(|s| policy_cidrs(&self.live.m.lowered[s]))
            .unwrap_or_default();
        let new: BTreeSet<IpNet> = new.map(policy_cidrs).unwrap_or_default();
        new.iter()
            .all(|c| old.contains(c) || self.live.cidr_refs.contains_key(c))
            && old
                .iter()
                .all(|c| new.contains(c) || self.live.cidr_refs.get(c).is_some_and(|n| *n > 1))
    }

    /// Detaches the policy in `slot` (its subjects are affected).
    fn unlink(&mut self, slot: usize, affected: &mut BTreeSet<usize>) {
        let live = &mut self.live;
        let p = live.m.lowered[slot].clone();
        let mut subjects = BTreeSet::new();
        live.subjects_of([&slot], &mut subjects);
        for ls in &subjects {
            remove_sorted(&mut live.m.by_local[*ls], slot);
        }
        affected.extend(subjects);
        let (sk, pks) = std::mem::take(&mut live.m.keys[slot]);
        live.m.peer_sets[slot].clear();
        if let Some(u) = live.subject_users.get_mut(&sk) {
            u.remove(&slot);
            if u.is_empty() {
                live.subject_users.remove(&sk);
                live.m.uni.subject_cache.remove(&sk);
            }
        }
        for k in pks.into_iter().flatten() {
            if let Some(u) = live.peer_users.get_mut(&k) {
                u.remove(&slot);
                if u.is_empty() {
                    live.peer_users.remove(&k);
                    live.m.uni.peer_cache.remove(&k);
                }
            }
        }
        live.named_any.remove(&slot);
        for c in policy_cidrs(&p) {
            if let Some(n) = live.cidr_refs.get_mut(&c) {
                *n -= 1;
                if *n == 0 {
                    live.cidr_refs.remove(&c);
                }
            }
        }
        for (id, _) in rule_refs(&p) {
            self.state.rules.remove(&id);
        }
    }

    /// Attaches policy `p` in `slot` (its subjects are affected).
    fn link(&mut self, slot: usize, p: Arc<ir::Policy>, affected: &mut BTreeSet<usize>) {
        let live = &mut self.live;
        let (sk, subjects) = live.m.uni.subjects(&p.subject);
        let mut pks = Vec::new();
        let mut peers = Vec::new();
        for r in &p.rules {
            match &r.peers {
                None => {
                    pks.push(None);
                    peers.push(None);
                }
                Some(ps) => {
                    let (k, v, _) = live.m.uni.peers(ps);
                    live.peer_users.entry(k.clone()).or_default().insert(slot);
                    pks.push(Some(k));
                    peers.push(Some(v));
                }
            }
        }
        live.subject_users
            .entry(sk.clone())
            .or_default()
            .insert(slot);
        let mut locals = BTreeSet::new();
        live.locals_of(&subjects, &mut locals);
        for ls in &locals {
            insert_sorted(&mut live.m.by_local[*ls], slot);
        }
        affected.extend(locals);
        if is_named_any(&p) {
            live.named_any.insert(slot);
        }
        for c in policy_cidrs(&p) {
            *live.cidr_refs.entry(c).or_default() += 1;
        }
        for (id, r) in rule_refs(&p) {
            self.state.rules.insert(id, r.clone());
        }
        live.m.keys[slot] = (sk, pks);
        live.m.peer_sets[slot] = peers;
        live.m.lowered[slot] = p;
    }

    fn finish_policy_change(&mut self) {
        let live: Vec<&Arc<ir::Policy>> = self
            .live
            .slot_of
            .values()
            .map(|s| &self.live.m.lowered[*s])
            .collect();
        self.state.next_change = next_change(&live, self.at);
    }

    /// Replaces the labels of workload `r`.
    pub fn set_workload_labels(
        &mut self,
        r: &WorkloadRef,
        labels: BTreeMap<String, String>,
    ) -> Result<StateDiff, Error> {
        let mut w = self
            .inventory
            .workload(r)
            .ok_or_else(|| no_workload(r))?
            .clone();
        w.labels = labels;
        self.change_workload(r, Some(w))
    }

    /// Adds a workload or replaces the one with the same namespace and name. The workload is
    /// validated as in an inventory file (`source` names it in errors); its addresses and cgroup
    /// must not belong to another workload.
    pub fn upsert_workload(&mut self, source: &str, w: Workload) -> Result<StateDiff, Error> {
        let r = w.reference();
        let one = Inventory {
            namespaces: self
                .inventory
                .namespaces
                .iter()
                .filter(|n| n.name == w.namespace)
                .cloned()
                .collect(),
            workloads: vec![w.clone()],
        };
        one.validate(source)?;
        let object = format!("Workload {r}");
        for (j, ip) in w.ips.iter().enumerate() {
            if let Some(other) = self.live.ip_owner.get(ip).filter(|o| **o != r) {
                return Err(Error::invalid(
                    source,
                    &object,
                    format!("ips[{j}]"),
                    format!("{ip} already belongs to Workload {other}"),
                ));
            }
        }
        if let Some(cg) = &w.cgroup
            && let Some(other) = self.live.cgroup_owner.get(cg).filter(|o| **o != r)
        {
            return Err(Error::invalid(
                source,
                &object,
                "cgroup",
                format!("{cg} already belongs to Workload {other}"),
            ));
        }
        self.change_workload(&r, Some(w))
    }

    /// Removes a workload; one that is not present changes nothing.
    pub fn remove_workload(&mut self, r: &WorkloadRef) -> Result<StateDiff, Error> {
        if self.inventory.workload(r).is_none() {
            return Ok(StateDiff::default());
        }
        self.change_workload(r, None)
    }

    /// Replaces the labels of namespace `name` (full compile: every identity of the namespace
    /// changes). `kubernetes.io/metadata.name`, if given, must equal the name.
    pub fn set_namespace_labels(
        &mut self,
        name: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<StateDiff, Error> {
        let mut inventory = self.inventory.clone();
        if !inventory.set_namespace_labels(name, labels) {
            return Err(Error::invalid(
                "inventory",
                &format!("Namespace {name}"),
                "name",
                "no such namespace",
            ));
        }
        inventory.validate("inventory")?;
        self.rebuild(self.policies.clone(), inventory, self.at)
    }

    /// Replaces workload `r` by `new` (None: removes it). `new` is valid.
    fn change_workload(
        &mut self,
        r: &WorkloadRef,
        new: Option<Workload>,
    ) -> Result<StateDiff, Error> {
        let old = self.inventory.workload(r).cloned();
        let in_cidr = |w: &Option<Workload>| {
            w.iter()
                .flat_map(|w| &w.ips)
                .any(|ip| self.live.m.uni.cidr_index.most_specific(*ip).is_some())
        };
        if in_cidr(&old) || in_cidr(&new) {
            let mut inventory = self.inventory.clone();
            inventory
                .workloads
                .retain(|w| w.namespace != r.namespace || w.name != r.name);
            if let Some(w) = new {
                inventory.workloads.push(w);
            }
            return self.rebuild(self.policies.clone(), inventory, self.at);
        }
        // The new workload's label set: known (live or retired), or new (allocated first, so
        // that an exhausted range changes nothing).
        let mut fresh = None;
        let new_ls = match &new {
            None => None,
            Some(w) => {
                let nsl = self
                    .live
                    .m
                    .uni
                    .namespaces
                    .get(&w.namespace)
                    .map(|n| n.0.clone())
                    .unwrap_or_default();
                let mut ports = w.ports.clone();
                ports.sort();
                let set = LabelSet {
                    namespace: w.namespace.clone(),
                    namespace_labels: nsl,
                    labels: w.labels.clone(),
                    service_account: w.service_account.clone(),
                    ports,
                };
                let key: Arc<str> = set.key().into();
                match self.live.ls_by_key.get(&key) {
                    Some(ls) => Some(*ls),
                    None => {
                        if self.compiler.table.get(&key).is_none() {
                            self.compiler
                                .table
                                .allocate(&BTreeSet::from([key.to_string()]))?;
                        }
                        let id = self
                            .compiler
                            .table
                            .get(&key)
                            .unwrap_or(crate::identity::reserved()[2].0);
                        fresh = Some((Arc::new(set), key, id));
                        None
                    }
                }
            }
        };
        let mut diff = StateDiff::default();
        let live = &mut self.live;
        let new_ls = match fresh {
            Some((set, key, id)) => {
                let uni = &mut live.m.uni;
                let ls = uni.label_sets.len();
                uni.label_sets.push(set);
                uni.ls_ids.push(id);
                uni.ls_keys.push(key.clone());
                uni.composites_of_ls.push(Vec::new());
                live.m.by_local.push(Vec::new());
                live.members.push(0);
                live.ls_by_key.insert(key, ls);
                Some(ls)
            }
            None => new_ls,
        };
        let old_ls = live.m.uni.workloads.get(r).map(|x| x.0);
        // Addresses: the old workload's entries out, the new one's in.
        let mut addr_old: BTreeMap<AddrPrefix, u32> = BTreeMap::new();
        let mut addr_new: BTreeMap<AddrPrefix, u32> = BTreeMap::new();
        let prefix = |ip: &IpAddr| AddrPrefix {
            addr: crate::identity::addr_bytes(*ip),
            prefix_len: 128,
        };
        if let (Some(w), Some(ls)) = (&old, old_ls) {
            for ip in &w.ips {
                addr_old.insert(prefix(ip), live.m.uni.ls_ids[ls]);
                live.ip_owner.remove(ip);
            }
            if let Some(cg) = &w.cgroup {
                live.cgroup_owner.remove(cg);
            }
        }
        if let (Some(w), Some(ls)) = (&new, new_ls) {
            for ip in &w.ips {
                addr_new.insert(prefix(ip), live.m.uni.ls_ids[ls]);
                live.ip_owner.insert(*ip, r.clone());
            }
            if let Some(cg) = &w.cgroup {
                live.cgroup_owner.insert(cg.clone(), r.clone());
            }
        }
        for (k, v) in &addr_new {
            if addr_old.get(k) != Some(v) {
                diff.addresses.upserts.push((*k, *v));
                self.state.addresses.insert(*k, *v);
            }
        }
        for k in addr_old.keys() {
            if !addr_new.contains_key(k) {
                diff.addresses.removals.push(*k);
                self.state.addresses.remove(k);
            }
        }
        // The workload entry.
        match (&new, new_ls) {
            (Some(w), Some(ls)) => {
                let cw = CompiledWorkload {
                    identity: live.m.uni.ls_ids[ls],
                    cgroup: w.cgroup.clone(),
                    ips: w.ips.clone(),
                };
                if self.state.workloads.get(r) != Some(&cw) {
                    diff.workloads.upserts.push((r.clone(), cw.clone()));
                    self.state.workloads.insert(r.clone(), cw);
                }
                live.m
                    .uni
                    .workloads
                    .insert(r.clone(), (ls, w.ips.clone(), w.cgroup.clone()));
            }
            _ => {
                if self.state.workloads.remove(r).is_some() {
                    diff.workloads.removals.push(r.clone());
                }
                live.m.uni.workloads.remove(r);
            }
        }
        // Identities that appear or disappear.
        let mut affected = BTreeSet::new();
        let mut partial = Partial::new();
        if old_ls != new_ls {
            if let Some(ls) = old_ls {
                live.members[ls] -= 1;
                if live.members[ls] == 0 {
                    live.retired(ls, &mut affected, &mut partial);
                    self.state.identities.remove(&live.m.uni.ls_ids[ls]);
                }
            }
            if let Some(ls) = new_ls {
                live.members[ls] += 1;
                if live.members[ls] == 1 {
                    live.born(ls, &mut affected, &mut partial);
                    self.state.identities.insert(
                        live.m.uni.ls_ids[ls],
                        IdentityInfo::Workload((*live.m.uni.label_sets[ls]).clone()),
                    );
                }
            }
        }
        // The inventory.
        let pos = self
            .inventory
            .workloads
            .iter()
            .position(|w| w.namespace == r.namespace && w.name == r.name);
        match (pos, new) {
            (Some(i), Some(w)) => self.inventory.workloads[i] = w,
            (Some(i), None) => {
                self.inventory.workloads.remove(i);
            }
            (None, Some(w)) => self.inventory.workloads.push(w),
            (None, None) => {}
        }
        Ok(self.recompute(affected, partial, diff))
    }

    /// Resolves the local identities of label sets `affected` again, and for `(label set,
    /// peer)` in `partial` (label set not in `affected`) the entries of that peer; patches the
    /// held maps and returns `diff` with the changes added, every list sorted by key.
    fn recompute(
        &mut self,
        affected: BTreeSet<usize>,
        partial: Partial,
        mut diff: StateDiff,
    ) -> StateDiff {
        let m = &self.live.m;
        let ctx = Ctx {
            uni: &m.uni,
            policies: &m.lowered,
            peer_sets: &m.peer_sets,
            at: self.at,
        };
        for &ls in &affected {
            let id = m.uni.ls_ids[ls];
            let alive = self.live.members[ls] > 0;
            let mut entries: BTreeMap<PolicyEntryKey, PolicyValue> = BTreeMap::new();
            let mut defaults: BTreeMap<DefaultKey, PolicyValue> = BTreeMap::new();
            if alive {
                for dir in [Direction::Ingress, Direction::Egress] {
                    let out = compile_local(&ctx, &m.by_local[ls], ls, dir, None);
                    entries.extend(out.entries);
                    defaults.extend(out.default);
                }
            }
            patch(
                &mut self.state.policy,
                bound(id, 0)..bound(id + 1, 0),
                entries,
                &mut diff,
            );
            for dir in [Direction::Ingress, Direction::Egress] {
                let k = DefaultKey {
                    local_identity: id,
                    direction: dir.to_raw(),
                    _pad: [0; 3],
                };
                match defaults.get(&k) {
                    Some(v) => {
                        if self.state.defaults.insert(k, *v) != Some(*v) {
                            diff.defaults.upserts.push((k, *v));
                        }
                    }
                    None => {
                        if self.state.defaults.remove(&k).is_some() {
                            diff.defaults.removals.push(k);
                        }
                    }
                }
            }
        }
        for (ls, peer) in partial {
            if affected.contains(&ls) || self.live.members[ls] == 0 {
                continue;
            }
            let id = m.uni.ls_ids[ls];
            let mut entries: BTreeMap<PolicyEntryKey, PolicyValue> = BTreeMap::new();
            for dir in [Direction::Ingress, Direction::Egress] {
                let out = compile_local(&ctx, &m.by_local[ls], ls, dir, Some(peer));
                entries.extend(out.entries);
            }
            let range = bound(id, peer)..bound(id, peer + 1);
            patch(&mut self.state.policy, range, entries, &mut diff);
        }
        diff.policy.upserts.sort_unstable_by_key(|x| x.0);
        diff.policy.removals.sort_unstable();
        diff.defaults.upserts.sort_unstable_by_key(|x| x.0);
        diff.defaults.removals.sort_unstable();
        diff.addresses.upserts.sort_unstable_by_key(|x| x.0);
        diff.addresses.removals.sort_unstable();
        diff.workloads.upserts.sort_by(|a, b| a.0.cmp(&b.0));
        diff.workloads.removals.sort();
        diff
    }
}
