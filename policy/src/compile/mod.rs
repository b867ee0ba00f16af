//! The compiler: policies + inventory -> [`CompiledState`], the desired contents of the kernel
//! maps, fully resolved (design.md "Why entries are fully resolved").
//!
//! For each local identity and direction, the rules that apply are sorted by precedence; every
//! peer identity some rule names specifically (plus the wildcard `ANY`) gets its port space cut
//! into intervals on which the set of covering rules is constant; each interval is resolved
//! completely (wildcard-peer rules included), equal neighbours are merged, and what differs from
//! the fallback (`ANY` entry, then default) is written as prefix-aligned port blocks. Peers that
//! match the same rules share one resolution (the per-`(local, direction)` signature cache), and
//! each distinct selector is evaluated once per compile over the distinct label sets.

mod diff;
mod incremental;
mod local;
mod ports;
mod resolve;
mod universe;

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;

use enforcer_common::{
    DefaultKey, PROTO_OTHER, PROTO_SCTP, PROTO_TCP, PROTO_UDP, PolicyKey, PolicyValue,
    identity::ANY,
};
use ipnet::IpNet;
use jiff::Timestamp;
use serde::Serialize;

use crate::identity::{AllocationTable, IdentityInfo};
use crate::ir::{self, Port, dir_index};
use crate::model::{Inventory, NamedPort, WorkloadRef};
use crate::rules::{Direction, RuleRef};
use crate::validate::parse_protocol;
use crate::{Error, PolicySet};

pub use diff::{MapDiff, StateDiff};
pub use incremental::Incremental;
use local::{Ctx, compile_local, fingerprint};
pub(crate) use resolve::nanos;
use resolve::{CRule, Isolation};
pub(crate) use universe::mapped_v4_range;
use universe::{PeerKind, Universe};

/// A policy trie entry's key: the [`PolicyKey`] and its prefix length (80..=96 bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyEntryKey {
    /// The key data.
    pub key: PolicyKey,
    /// Matched bits: 80 (all ports) ..= 96 (one port).
    pub prefix_len: u32,
}

/// An address trie entry's key: 16 bytes (IPv4 mapped) and prefix length (0..=128).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct AddrPrefix {
    /// Address, IPv6 or `::ffff:a.b.c.d`.
    pub addr: [u8; 16],
    /// Matched bits.
    pub prefix_len: u32,
}

/// One workload's compiled view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CompiledWorkload {
    /// Its identity (the `WORKLOADS` map value for its cgroup).
    pub identity: u32,
    /// Its cgroup v2 directory, if known.
    pub cgroup: Option<String>,
    /// Its addresses.
    pub ips: Vec<IpAddr>,
}

/// The desired contents of the kernel maps, plus what the numbers mean.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CompiledState {
    /// `POLICY` trie entries; times in Unix-epoch ns (0 / `u64::MAX` unbounded).
    pub policy: BTreeMap<PolicyEntryKey, PolicyValue>,
    /// `DEFAULTS` entries (one per isolated `(identity, direction)`).
    pub defaults: BTreeMap<DefaultKey, PolicyValue>,
    /// `ADDRESSES` trie entries.
    pub addresses: BTreeMap<AddrPrefix, u32>,
    /// Every inventory workload.
    pub workloads: BTreeMap<WorkloadRef, CompiledWorkload>,
    /// What each identity number stands for.
    pub identities: BTreeMap<u32, IdentityInfo>,
    /// Every rule id (and isolating policy id) of the policy set.
    pub rules: BTreeMap<u32, RuleRef>,
    /// The next instant after `at` at which some rule's window opens or closes.
    pub next_change: Option<Timestamp>,
}

/// Whether the CIDR selector `net except [..]` selects the policy CIDR `c` (same family, inside
/// `net`, not inside any exception).
pub(crate) fn cidr_selects(net: &IpNet, except: &[IpNet], c: &IpNet) -> bool {
    net.contains(c) && !except.iter().any(|e| e.contains(c))
}

/// The compiler; holds the identity allocation table and the incremental cache across
/// compiles. The cache keeps, per `(local identity, direction)`, a fingerprint of every input its
/// entries depend on (its label set, the applicable policies, their rules' selected peers, which
/// windows are open, and for egress named ports the peers' ports) with the entries it produced,
/// plus the previous maps: a recompile only resolves the `(local, direction)` pairs whose inputs
/// changed and patches the maps.
#[derive(Clone, Debug, Default)]
pub struct Compiler {
    table: AllocationTable,
    cache: Cache,
}

/// What one `(local identity, direction)` produced.
#[derive(Clone, Debug, Default)]
struct LocalOut {
    entries: Vec<(PolicyEntryKey, PolicyValue)>,
    default: Option<(DefaultKey, PolicyValue)>,
}

#[derive(Clone, Debug, Default)]
struct Cache {
    locals: HashMap<(u32, u8), (u64, LocalOut)>,
    /// Label sets by a hash of their workload inputs (see [`Universe::build`]).
    label_sets: HashMap<u64, Vec<universe::LabelSetEntry>>,
    /// Selector results of the previous compile and the universe signature they hold for.
    selectors: SelectorCache,
    policy: BTreeMap<PolicyEntryKey, PolicyValue>,
    defaults: BTreeMap<DefaultKey, PolicyValue>,
}

/// Subject and peer selector results, valid for one universe signature.
#[derive(Clone, Debug, Default)]
struct SelectorCache {
    signature: u64,
    /// Every peer identity of the universe the results hold for.
    ids: HashSet<u32>,
    subjects: HashMap<String, universe::SubjectEntry>,
    peers: HashMap<String, universe::PeerEntry>,
    /// Per policy fingerprint: the cache keys of its subject and of its rules' peer lists.
    by_policy: HashMap<u64, (String, Vec<Option<String>>)>,
}

/// What a full compile derived from its inputs, beyond the state: the universe with its
/// selector results, the lowered policies (by slot), per slot the cache keys of its subject and
/// rule peer lists and the rules' selected peers, and per label set the slots of the policies
/// whose subject selects it.
pub(crate) struct Model {
    pub uni: Universe,
    pub lowered: Vec<Arc<ir::Policy>>,
    pub keys: Vec<(String, Vec<Option<String>>)>,
    pub peer_sets: Vec<Vec<Option<Arc<Vec<u32>>>>>,
    pub by_local: Vec<Vec<usize>>,
    pub by_policy: HashMap<u64, (String, Vec<Option<String>>)>,
}

/// A policy's subject label-set identities, and per rule its selected peers (None: any) and
/// their hash.
type PolicySelections = (Arc<Vec<u32>>, Vec<(Option<Arc<Vec<u32>>>, u64)>);

impl Cache {
    fn remove(&mut self, out: &LocalOut) {
        for (k, _) in &out.entries {
            self.policy.remove(k);
        }
        if let Some((k, _)) = &out.default {
            self.defaults.remove(k);
        }
    }

    fn insert(&mut self, out: &LocalOut) {
        self.policy.extend(out.entries.iter().copied());
        if let Some((k, v)) = out.default {
            self.defaults.insert(k, v);
        }
    }
}

pub(crate) fn hash_of(x: impl Hash) -> u64 {
    let mut h = DefaultHasher::new();
    x.hash(&mut h);
    h.finish()
}

const PROTOCOLS: [u8; 4] = [PROTO_TCP, PROTO_UDP, PROTO_SCTP, PROTO_OTHER];

/// Resolved segments of the port space: `(start, end inclusive, value)`, sorted, covering all.
type Segments = Vec<(u16, u16, PolicyValue)>;

impl Compiler {
    /// A compiler that continues the numbering of `table`.
    pub fn new(table: AllocationTable) -> Self {
        Compiler {
            table,
            cache: Cache::default(),
        }
    }

    /// The allocation table (persist it to keep identities stable across restarts).
    pub fn table(&self) -> &AllocationTable {
        &self.table
    }

    /// Compiles `policies` over `inventory`, resolved at instant `at`.
    pub fn compile(
        &mut self,
        policies: &PolicySet,
        inventory: &Inventory,
        at: Timestamp,
    ) -> Result<CompiledState, Error> {
        let (state, mut model) = self.build(policies, inventory, at)?;
        self.cache.selectors = SelectorCache {
            signature: model.uni.signature,
            ids: model.uni.ids(),
            subjects: std::mem::take(&mut model.uni.subject_cache),
            peers: std::mem::take(&mut model.uni.peer_cache),
            by_policy: model.by_policy,
        };
        Ok(state)
    }

    /// The full compile: the state, and the model it was derived from (kept by
    /// [`Incremental`] to apply later changes in place).
    pub(crate) fn build(
        &mut self,
        policies: &PolicySet,
        inventory: &Inventory,
        at: Timestamp,
    ) -> Result<(CompiledState, Model), Error> {
        let lowered: Vec<Arc<ir::Policy>> = policies.lowered().cloned().collect();
        let mut uni = Universe::build(
            &lowered,
            inventory,
            &mut self.table,
            &mut self.cache.label_sets,
        )?;
        // Selector results carry over: unchanged universe as they are, otherwise rebased
        // (dropped identities removed, new identities evaluated).
        let mut prev = std::mem::take(&mut self.cache.selectors);
        if prev.signature == uni.signature {
            uni.subject_cache = std::mem::take(&mut prev.subjects);
            uni.peer_cache = std::mem::take(&mut prev.peers);
        } else {
            let (subjects, peers) = (
                std::mem::take(&mut prev.subjects),
                std::mem::take(&mut prev.peers),
            );
            uni.rebase(&prev.ids, subjects, peers);
        }
        let mut state = CompiledState {
            addresses: uni.addresses.clone(),
            identities: uni.infos(),
            ..CompiledState::default()
        };
        for (r, (ls, ips, cgroup)) in &uni.workloads {
            state.workloads.insert(
                r.clone(),
                CompiledWorkload {
                    identity: uni.ls_ids[*ls],
                    cgroup: cgroup.clone(),
                    ips: ips.clone(),
                },
            );
        }
        // Rule ids, with collision detection.
        for p in &lowered {
            let refs = p
                .rules
                .iter()
                .map(|r| (r.rule_id, &r.rule))
                .chain(p.isolates.iter().flatten().map(|(r, id)| (*id, r)));
            for (id, r) in refs {
                if let Some(prev) = state.rules.get(&id)
                    && prev != r
                {
                    return Err(Error::RuleIdCollision {
                        id,
                        first: prev.to_string(),
                        second: r.to_string(),
                    });
                }
                state.rules.insert(id, r.clone());
            }
        }
        // Next window boundary.
        state.next_change = lowered
            .iter()
            .flat_map(|p| p.rules.iter())
            .flat_map(|r| [r.not_before, r.expires_at])
            .flatten()
            .filter(|t| *t > at)
            .min();
        // Subjects and rule peers per policy (cache keys remembered per policy fingerprint; each
        // distinct selector evaluated once), inverted to policies per label set.
        let mut by_policy = HashMap::new();
        let mut per_policy: Vec<PolicySelections> = Vec::with_capacity(lowered.len());
        for p in &lowered {
            let known = prev.by_policy.get(&p.fingerprint).and_then(|(sk, pks)| {
                let subjects = uni.subject_cache.get(sk)?.1.clone();
                let peers = pks
                    .iter()
                    .map(|k| match k {
                        None => Some((None, 0)),
                        Some(k) => uni.peer_cache.get(k).map(|(_, v, h)| (Some(v.clone()), *h)),
                    })
                    .collect::<Option<Vec<_>>>()?;
                Some(((sk.clone(), pks.clone()), (subjects, peers)))
            });
            let (keys, sel) = match known {
                Some(v) => v,
                None => {
                    let (sk, subjects) = uni.subjects(&p.subject);
                    let mut pks = Vec::new();
                    let mut peers = Vec::new();
                    for r in &p.rules {
                        match &r.peers {
                            None => {
                                pks.push(None);
                                peers.push((None, 0));
                            }
                            Some(ps) => {
                                let (k, v, h) = uni.peers(ps);
                                pks.push(Some(k));
                                peers.push((Some(v), h));
                            }
                        }
                    }
                    ((sk, pks), (subjects, peers))
                }
            };
            by_policy.insert(p.fingerprint, keys);
            per_policy.push(sel);
        }
        let mut by_local: Vec<Vec<usize>> = vec![Vec::new(); uni.label_sets.len()];
        for (pi, (subjects, _)) in per_policy.iter().enumerate() {
            for id in subjects.iter() {
                if let Some(ls) = uni.ls_index.get(id) {
                    by_local[*ls].push(pi);
                }
            }
        }
        let peer_sets: Vec<Vec<Option<Arc<Vec<u32>>>>> = per_policy
            .iter()
            .map(|(_, rs)| rs.iter().map(|(p, _)| p.clone()).collect())
            .collect();
        let peer_hashes: Vec<Vec<u64>> = per_policy
            .iter()
            .map(|(_, rs)| rs.iter().map(|(_, h)| *h).collect())
            .collect();
        // Every peer identity with its label set's named ports (egress named-port resolution).
        let ports_hash = hash_of((
            &uni.ls_ids,
            uni.label_sets.iter().map(|l| &l.ports).collect::<Vec<_>>(),
            &uni.composites,
        ));
        let ctx = Ctx {
            uni: &uni,
            policies: &lowered,
            peer_sets: &peer_sets,
            at,
        };
        let mut seen = HashSet::new();
        for (ls, pols) in by_local.iter().enumerate() {
            for dir in [Direction::Ingress, Direction::Egress] {
                let key = (uni.ls_ids[ls], dir.to_raw());
                seen.insert(key);
                let fp = fingerprint(&ctx, &peer_hashes, ports_hash, pols, ls, dir);
                if self
                    .cache
                    .locals
                    .get(&key)
                    .is_some_and(|(old, _)| *old == fp)
                {
                    continue;
                }
                let out = compile_local(&ctx, pols, ls, dir, None);
                if let Some((_, old)) = self.cache.locals.remove(&key) {
                    self.cache.remove(&old);
                }
                self.cache.insert(&out);
                self.cache.locals.insert(key, (fp, out));
            }
        }
        let gone: Vec<(u32, u8)> = self
            .cache
            .locals
            .keys()
            .filter(|k| !seen.contains(k))
            .copied()
            .collect();
        for key in gone {
            if let Some((_, old)) = self.cache.locals.remove(&key) {
                self.cache.remove(&old);
            }
        }
        // Keep the results of the selectors current policies use.
        let used_subjects: HashSet<&String> = by_policy.values().map(|(sk, _)| sk).collect();
        let used_peers: HashSet<&String> = by_policy
            .values()
            .flat_map(|(_, pks)| pks.iter().flatten())
            .collect();
        uni.subject_cache.retain(|k, _| used_subjects.contains(k));
        uni.peer_cache.retain(|k, _| used_peers.contains(k));
        state.policy = self.cache.policy.clone();
        state.defaults = self.cache.defaults.clone();
        let keys = lowered
            .iter()
            .map(|p| by_policy.get(&p.fingerprint).cloned().unwrap_or_default())
            .collect();
        let model = Model {
            uni,
            lowered,
            keys,
            peer_sets,
            by_local,
            by_policy,
        };
        Ok((state, model))
    }
}
