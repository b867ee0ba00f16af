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
    label_sets: HashMap<u64, Vec<(crate::identity::LabelSet, String)>>,
    /// Selector results of the previous compile and the universe signature they hold for.
    selectors: SelectorCache,
    policy: BTreeMap<PolicyEntryKey, PolicyValue>,
    defaults: BTreeMap<DefaultKey, PolicyValue>,
}

/// Subject and peer selector results, valid for one universe signature.
#[derive(Clone, Debug, Default)]
struct SelectorCache {
    signature: u64,
    subjects: HashMap<String, Arc<Vec<usize>>>,
    peers: HashMap<String, Arc<Vec<u32>>>,
    /// Per policy fingerprint: its subjects and its rules' peers.
    by_policy: HashMap<u64, PolicySelections>,
}

/// A policy's subject label sets, and per rule its selected peers (None: any) and their hash.
type PolicySelections = (Arc<Vec<usize>>, Arc<Vec<(Option<Arc<Vec<u32>>>, u64)>>);

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
        let lowered: Vec<Arc<ir::Policy>> = policies.lowered().cloned().collect();
        let mut uni = Universe::build(
            &lowered,
            inventory,
            &mut self.table,
            &mut self.cache.label_sets,
        )?;
        let mut prev = std::mem::take(&mut self.cache.selectors);
        if prev.signature == uni.signature {
            uni.subject_cache = std::mem::take(&mut prev.subjects);
            uni.peer_cache = std::mem::take(&mut prev.peers);
        } else {
            prev.by_policy.clear();
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
        // Subjects and rule peers per policy (reused by policy fingerprint while the universe is
        // unchanged; each distinct selector evaluated once), inverted to policies per label set.
        let mut by_policy = HashMap::new();
        let mut per_policy: Vec<PolicySelections> = Vec::with_capacity(lowered.len());
        for p in &lowered {
            let sel = match prev.by_policy.get(&p.fingerprint) {
                Some(v) => v.clone(),
                None => {
                    let subjects = uni.subjects(&p.subject);
                    let peers: Vec<(Option<Arc<Vec<u32>>>, u64)> = p
                        .rules
                        .iter()
                        .map(|r| {
                            let set = r.peers.as_ref().map(|ps| uni.peers(ps));
                            let h = set.as_ref().map_or(0, |v| hash_of(&**v));
                            (set, h)
                        })
                        .collect();
                    (subjects, Arc::new(peers))
                }
            };
            by_policy.insert(p.fingerprint, sel.clone());
            per_policy.push(sel);
        }
        let mut by_local: Vec<Vec<usize>> = vec![Vec::new(); uni.label_sets.len()];
        for (pi, (subjects, _)) in per_policy.iter().enumerate() {
            for ls in subjects.iter() {
                by_local[*ls].push(pi);
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
                let out = compile_local(&ctx, pols, ls, dir);
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
        self.cache.selectors = SelectorCache {
            signature: uni.signature,
            subjects: std::mem::take(&mut uni.subject_cache),
            peers: std::mem::take(&mut uni.peer_cache),
            by_policy,
        };
        state.policy = self.cache.policy.clone();
        state.defaults = self.cache.defaults.clone();
        Ok(state)
    }
}

/// Port intervals of `rule` for protocol `proto`, named ports resolved on `dst` (the
/// destination's named ports; None: no workload, named ports match nothing).
fn rule_intervals(rule: &ir::Rule, proto: u8, dst: Option<&[NamedPort]>) -> Vec<(u16, u16)> {
    let Some(ports) = &rule.ports else {
        return vec![(0, u16::MAX)];
    };
    let mut out = Vec::new();
    for p in ports {
        match p {
            Port::Range {
                protocol,
                start,
                end,
            } if *protocol == proto => out.push((*start, *end)),
            Port::Named { protocol, name } if *protocol == proto => {
                for np in dst.into_iter().flatten() {
                    if np.name == *name && parse_protocol(&np.protocol) == Some(proto) {
                        out.push((np.port, np.port));
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// Resolves the port space of one protocol for the rules matching one peer.
fn segments(
    rules: &[&CRule<'_>],
    proto: u8,
    dst: Option<&[NamedPort]>,
    iso: Isolation,
    at: Timestamp,
) -> Segments {
    let ivs: Vec<Vec<(u16, u16)>> = rules
        .iter()
        .map(|r| rule_intervals(r.rule, proto, dst))
        .collect();
    let mut cuts: Vec<u32> = vec![0, 65536];
    for iv in ivs.iter().flatten() {
        cuts.push(u32::from(iv.0));
        cuts.push(u32::from(iv.1) + 1);
    }
    cuts.sort_unstable();
    cuts.dedup();
    let mut out: Segments = Vec::new();
    let mut covering: Vec<&CRule<'_>> = Vec::new();
    for w in cuts.windows(2) {
        let (s, e) = (w[0] as u16, (w[1] - 1) as u16);
        covering.clear();
        for (r, iv) in rules.iter().zip(&ivs) {
            if iv.iter().any(|(a, b)| *a <= s && s <= *b) {
                covering.push(r);
            }
        }
        let v = resolve::resolve(&covering, iso, at);
        match out.last_mut() {
            Some(last) if last.2 == v => last.1 = e,
            _ => out.push((s, e, v)),
        }
    }
    out
}

/// The pieces of `spec` whose value differs from `base` (both cover the port space).
fn diff(spec: &Segments, base: &Segments) -> Segments {
    let mut out: Segments = Vec::new();
    let (mut i, mut j) = (0, 0);
    let mut s: u32 = 0;
    while s <= 65535 && i < spec.len() && j < base.len() {
        let e = u32::from(spec[i].1.min(base[j].1));
        if spec[i].2 != base[j].2 {
            match out.last_mut() {
                Some(last) if last.2 == spec[i].2 && u32::from(last.1) + 1 == s => {
                    last.1 = e as u16
                }
                _ => out.push((s as u16, e as u16, spec[i].2)),
            }
        }
        if u32::from(spec[i].1) == e {
            i += 1;
        }
        if u32::from(base[j].1) == e {
            j += 1;
        }
        s = e + 1;
    }
    out
}

fn emit(out: &mut LocalOut, local: u32, peer: u32, dir: u8, proto: u8, segs: &Segments) {
    for (s, e, v) in segs {
        for (start, prefix_len) in ports::blocks(*s, *e) {
            let key = PolicyKey {
                local_identity: local,
                peer_identity: peer,
                direction: dir,
                protocol: proto,
                port_be: start.to_be_bytes(),
            };
            out.entries.push((PolicyEntryKey { key, prefix_len }, *v));
        }
    }
}

/// Inputs shared by every local identity of one compile.
struct Ctx<'a> {
    uni: &'a Universe,
    policies: &'a [Arc<ir::Policy>],
    /// Selected peers per policy, per rule.
    peer_sets: &'a [Vec<Option<Arc<Vec<u32>>>>],
    at: Timestamp,
}

fn compile_local(ctx: &Ctx<'_>, pols: &[usize], ls: usize, dir: Direction) -> LocalOut {
    let (uni, policies, at) = (ctx.uni, ctx.policies, ctx.at);
    let mut out = LocalOut::default();
    let local = uni.ls_ids[ls];
    let mut isolators: Vec<(&crate::model::ObjectKey, bool, u32)> = Vec::new();
    let mut rules: Vec<CRule<'_>> = Vec::new();
    for &pi in pols {
        let p = &policies[pi];
        if let Some((_, id)) = &p.isolates[dir_index(dir)] {
            isolators.push((&p.key, p.audit, *id));
        }
        for (ri, r) in p
            .rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.direction == dir)
        {
            let peers = ctx.peer_sets[pi][ri].clone();
            rules.push(CRule {
                tier: p.tier,
                netpol: p.netpol,
                priority: p.priority,
                key: &p.key,
                audit: p.audit,
                rule: r,
                peers,
                active: r.active_at(at),
            });
        }
    }
    if rules.is_empty() && isolators.is_empty() {
        return out;
    }
    rules.sort_by(|a, b| a.order().cmp(&b.order()));
    isolators.sort();
    let iso = Isolation {
        actual: isolators.iter().find(|i| !i.1).map(|i| i.2),
        hypothetical: isolators.first().map(|i| i.2),
    };
    let raw_dir = dir.to_raw();
    let default = resolve::default_value(iso);
    if default != resolve::not_isolated() {
        out.default = Some((
            DefaultKey {
                local_identity: local,
                direction: raw_dir,
                _pad: [0; 3],
            },
            default,
        ));
    }
    let local_ports = &uni.label_sets[ls].ports;
    // Destination named ports for a peer: ingress -> the local workload; egress -> the peer's.
    let peer_ls = |peer: u32| match uni.peer_kinds.get(&peer) {
        Some(PeerKind::Workload(l)) | Some(PeerKind::Composite(l, _)) => Some(*l),
        _ => None,
    };
    // Wildcard lookup.
    let any_rules: Vec<&CRule<'_>> = rules.iter().filter(|r| r.matches_peer(ANY)).collect();
    let any_dst = match dir {
        Direction::Ingress => Some(local_ports.as_slice()),
        Direction::Egress => None,
    };
    let full: Segments = vec![(0, u16::MAX, default)];
    let mut any_segs: Vec<Segments> = Vec::new();
    for proto in PROTOCOLS {
        let segs = segments(&any_rules, proto, any_dst, iso, at);
        emit(&mut out, local, ANY, raw_dir, proto, &diff(&segs, &full));
        any_segs.push(segs);
    }
    // Specific peers.
    let mut peers: Vec<u32> = rules
        .iter()
        .filter_map(|r| r.peers.as_ref())
        .flat_map(|p| p.iter().copied())
        .collect();
    let named_any = dir == Direction::Egress
        && rules.iter().any(|r| {
            r.peers.is_none()
                && r.rule
                    .ports
                    .iter()
                    .flatten()
                    .any(|p| matches!(p, Port::Named { .. }))
        });
    if named_any {
        peers.extend(uni.ls_ids.iter().copied());
        peers.extend(uni.composites.iter().map(|c| c.2));
    }
    peers.sort_unstable();
    peers.dedup();
    let mut cache: HashMap<(Vec<usize>, Option<usize>), Vec<Segments>> = HashMap::new();
    for peer in peers {
        let matching: Vec<usize> = (0..rules.len())
            .filter(|&i| rules[i].matches_peer(peer))
            .collect();
        let dst_ls = match dir {
            Direction::Ingress => None,
            Direction::Egress => peer_ls(peer),
        };
        let has_named = matching.iter().any(|&i| {
            rules[i]
                .rule
                .ports
                .iter()
                .flatten()
                .any(|p| matches!(p, Port::Named { .. }))
        });
        let sig = (matching, if has_named { dst_ls } else { None });
        let diffs = cache.entry(sig).or_insert_with_key(|(matching, _)| {
            let m: Vec<&CRule<'_>> = matching.iter().map(|&i| &rules[i]).collect();
            let dst: Option<&[NamedPort]> = match dir {
                Direction::Ingress => Some(local_ports.as_slice()),
                Direction::Egress => dst_ls.map(|l| uni.label_sets[l].ports.as_slice()),
            };
            PROTOCOLS
                .iter()
                .zip(&any_segs)
                .map(|(proto, base)| diff(&segments(&m, *proto, dst, iso, at), base))
                .collect()
        });
        for (proto, d) in PROTOCOLS.iter().zip(diffs.iter()) {
            emit(&mut out, local, peer, raw_dir, *proto, d);
        }
    }
    out
}

/// Fingerprint of every input the entries of `(ls, dir)` depend on.
fn fingerprint(
    ctx: &Ctx<'_>,
    peer_hashes: &[Vec<u64>],
    ports_hash: u64,
    pols: &[usize],
    ls: usize,
    dir: Direction,
) -> u64 {
    let mut h = DefaultHasher::new();
    (ctx.uni.ls_ids[ls], dir, &ctx.uni.label_sets[ls]).hash(&mut h);
    let mut named = false;
    for &pi in pols {
        let p = &ctx.policies[pi];
        p.fingerprint.hash(&mut h);
        for (ri, r) in p
            .rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.direction == dir)
        {
            peer_hashes[pi][ri].hash(&mut h);
            r.active_at(ctx.at).hash(&mut h);
            for b in [r.not_before, r.expires_at].into_iter().flatten() {
                (b <= ctx.at).hash(&mut h);
            }
            named |= r
                .ports
                .iter()
                .flatten()
                .any(|p| matches!(p, Port::Named { .. }));
        }
    }
    if named && dir == Direction::Egress {
        ports_hash.hash(&mut h);
    }
    h.finish()
}
