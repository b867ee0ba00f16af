//! Resolution of one `(local identity, direction)`: the applicable rules in precedence order,
//! the wildcard and specific peers, port intervals per protocol, and the entries that differ
//! from the fallback. Also the fingerprint of its inputs for the incremental cache.

use super::*;

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
pub(super) struct Ctx<'a> {
    pub uni: &'a Universe,
    pub policies: &'a [Arc<ir::Policy>],
    /// Selected peers per policy, per rule.
    pub peer_sets: &'a [Vec<Option<Arc<Vec<u32>>>>],
    pub at: Timestamp,
}

/// The entries and default of `(ls, dir)`. With `only_peer`, just the entries of that specific
/// peer (no default, no wildcard entries): what changes for a local whose rules' peer lists
/// gained or lost that one identity and whose other inputs are unchanged.
pub(super) fn compile_local(
    ctx: &Ctx<'_>,
    pols: &[usize],
    ls: usize,
    dir: Direction,
    only_peer: Option<u32>,
) -> LocalOut {
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
    if default != resolve::not_isolated() && only_peer.is_none() {
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
        if only_peer.is_none() {
            emit(&mut out, local, ANY, raw_dir, proto, &diff(&segs, &full));
        }
        any_segs.push(segs);
    }
    // Specific peers.
    let named_any = dir == Direction::Egress
        && rules.iter().any(|r| {
            r.peers.is_none()
                && r.rule
                    .ports
                    .iter()
                    .flatten()
                    .any(|p| matches!(p, Port::Named { .. }))
        });
    let peers = match only_peer {
        Some(p) => {
            let named = rules.iter().any(|r| {
                r.peers
                    .as_ref()
                    .is_some_and(|ps| ps.binary_search(&p).is_ok())
            }) || (named_any
                && (uni.ls_index.contains_key(&p) || uni.composites.iter().any(|c| c.2 == p)));
            if named { vec![p] } else { Vec::new() }
        }
        None => all_peers(uni, &rules, named_any),
    };
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

/// Every specific peer some rule of a local names (all workload identities too when an egress
/// rule has a named port and no peer list), sorted.
fn all_peers(uni: &Universe, rules: &[CRule<'_>], named_any: bool) -> Vec<u32> {
    let mut peers: Vec<u32> = rules
        .iter()
        .filter_map(|r| r.peers.as_ref())
        .flat_map(|p| p.iter().copied())
        .collect();
    if named_any {
        // Every live label-set identity (an incremental universe keeps retired label sets).
        peers.extend(uni.ls_index.keys().copied());
        peers.extend(uni.composites.iter().map(|c| c.2));
    }
    peers.sort_unstable();
    peers.dedup();
    peers
}

/// Fingerprint of every input the entries of `(ls, dir)` depend on.
pub(super) fn fingerprint(
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
