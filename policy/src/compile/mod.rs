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

mod ports;
mod resolve;
mod universe;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
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

/// The compiler; holds the identity allocation table across compiles.
#[derive(Clone, Debug, Default)]
pub struct Compiler {
    table: AllocationTable,
}

const PROTOCOLS: [u8; 4] = [PROTO_TCP, PROTO_UDP, PROTO_SCTP, PROTO_OTHER];

/// Resolved segments of the port space: `(start, end inclusive, value)`, sorted, covering all.
type Segments = Vec<(u16, u16, PolicyValue)>;

impl Compiler {
    /// A compiler that continues the numbering of `table`.
    pub fn new(table: AllocationTable) -> Self {
        Compiler { table }
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
        let mut uni = Universe::build(&lowered, inventory, &mut self.table)?;
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
        // Subjects per policy, inverted to policies per label set.
        let mut by_local: Vec<Vec<usize>> = vec![Vec::new(); uni.label_sets.len()];
        for (pi, p) in lowered.iter().enumerate() {
            for ls in uni.subjects(&p.subject).iter() {
                by_local[*ls].push(pi);
            }
        }
        // Peers of every rule, once per rule (each distinct peer list once per compile).
        let peer_sets: Vec<Vec<Option<Arc<Vec<u32>>>>> = lowered
            .iter()
            .map(|p| {
                p.rules
                    .iter()
                    .map(|r| r.peers.as_ref().map(|ps| uni.peers(ps)))
                    .collect()
            })
            .collect();
        let ctx = Ctx {
            uni: &uni,
            policies: &lowered,
            peer_sets: &peer_sets,
            at,
        };
        for (ls, pols) in by_local.iter().enumerate() {
            for dir in [Direction::Ingress, Direction::Egress] {
                compile_local(&ctx, pols, ls, dir, &mut state);
            }
        }
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

fn emit(state: &mut CompiledState, local: u32, peer: u32, dir: u8, proto: u8, segs: &Segments) {
    for (s, e, v) in segs {
        for (start, prefix_len) in ports::blocks(*s, *e) {
            let key = PolicyKey {
                local_identity: local,
                peer_identity: peer,
                direction: dir,
                protocol: proto,
                port_be: start.to_be_bytes(),
            };
            state.policy.insert(PolicyEntryKey { key, prefix_len }, *v);
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

fn compile_local(
    ctx: &Ctx<'_>,
    pols: &[usize],
    ls: usize,
    dir: Direction,
    state: &mut CompiledState,
) {
    let (uni, policies, at) = (ctx.uni, ctx.policies, ctx.at);
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
        return;
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
        state.defaults.insert(
            DefaultKey {
                local_identity: local,
                direction: raw_dir,
                _pad: [0; 3],
            },
            default,
        );
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
        emit(state, local, ANY, raw_dir, proto, &diff(&segs, &full));
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
            emit(state, local, peer, raw_dir, *proto, d);
        }
    }
}
