//! The identity universe of one compile: workload label sets, policy CIDRs and composite
//! identities, their numbers, the address trie contents, and the selector cache (each distinct
//! selector evaluated once over the distinct label sets, not over workloads).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::identity::{
    AllocationTable, IdentityInfo, LabelSet, addr_bytes, cidr_key, composite_key, net_bytes,
};
use crate::ir;
use crate::model::inventory::NAMESPACE_NAME_LABEL;
use crate::model::{Inventory, WorkloadRef};
use crate::selector::{canonical, matches};
use crate::{Error, identity};

use super::AddrPrefix;

/// What a peer identity is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PeerKind {
    Workload(usize),
    Cidr(usize),
    Composite(usize, usize),
}

pub(crate) struct Universe {
    pub label_sets: Vec<Arc<LabelSet>>,
    pub ls_ids: Vec<u32>,
    pub cidrs: Vec<IpNet>,
    pub cidr_ids: Vec<u32>,
    /// (label set, cidr, id).
    pub composites: Vec<(usize, usize, u32)>,
    pub composites_of_ls: Vec<Vec<usize>>,
    pub composites_of_cidr: Vec<Vec<usize>>,
    pub peer_kinds: HashMap<u32, PeerKind>,
    /// Workload -> (label set index, ips, cgroup).
    pub workloads: BTreeMap<WorkloadRef, (usize, Vec<IpAddr>, Option<String>)>,
    pub addresses: BTreeMap<AddrPrefix, u32>,
    /// Namespace name -> (labels, label sets of its workloads).
    pub namespaces: BTreeMap<String, (BTreeMap<String, String>, Vec<usize>)>,
    /// Namespace label `(key, value)` -> namespaces carrying it (for `matchLabels` lookups).
    ns_by_label: HashMap<(String, String), Vec<String>>,
    /// Hash of the label sets, CIDRs, composites and their numbers: selector results can be
    /// reused across compiles while it is unchanged.
    pub signature: u64,
    pub subject_cache: HashMap<String, SubjectEntry>,
    pub peer_cache: HashMap<String, PeerEntry>,
    /// Label-set identity -> index in `label_sets` (live label sets only).
    pub ls_index: HashMap<u32, usize>,
    /// Identity key of each label set.
    pub ls_keys: Vec<Arc<str>>,
    /// The policy CIDRs, for the most specific one containing an address.
    pub cidr_index: CidrIndex,
}

/// Exact-match tables of the policy CIDRs per family and prefix length (longest first), for the
/// most specific CIDR containing an address.
pub(crate) struct CidrIndex {
    v4: Vec<(u8, HashMap<u32, usize>)>,
    v6: Vec<(u8, HashMap<u128, usize>)>,
}

impl CidrIndex {
    fn new(cidrs: &[IpNet]) -> Self {
        let mut v4: BTreeMap<u8, HashMap<u32, usize>> = BTreeMap::new();
        let mut v6: BTreeMap<u8, HashMap<u128, usize>> = BTreeMap::new();
        for (i, c) in cidrs.iter().enumerate() {
            match c {
                IpNet::V4(n) => {
                    v4.entry(n.prefix_len())
                        .or_default()
                        .insert(u32::from(n.network()), i);
                }
                IpNet::V6(n) => {
                    v6.entry(n.prefix_len())
                        .or_default()
                        .insert(u128::from(n.network()), i);
                }
            }
        }
        CidrIndex {
            v4: v4.into_iter().rev().collect(),
            v6: v6.into_iter().rev().collect(),
        }
    }

    /// Most specific CIDR (same family) containing `ip`.
    pub fn most_specific(&self, ip: IpAddr) -> Option<usize> {
        match ip {
            IpAddr::V4(a) => self.v4.iter().find_map(|(len, m)| {
                let mask = if *len == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(*len))
                };
                m.get(&(u32::from(a) & mask)).copied()
            }),
            IpAddr::V6(a) => self.v6.iter().find_map(|(len, m)| {
                let mask = if *len == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(*len))
                };
                m.get(&(u128::from(a) & mask)).copied()
            }),
        }
    }
}

impl Universe {
    /// Builds the universe. `ls_cache` maps a hash of a workload's identity inputs to the label
    /// sets (and keys) built for it by earlier compiles; it is replaced by the entries used now.
    pub fn build(
        policies: &[Arc<ir::Policy>],
        inventory: &Inventory,
        table: &mut AllocationTable,
        ls_cache: &mut HashMap<u64, Vec<LabelSetEntry>>,
    ) -> Result<Universe, Error> {
        let mut label_sets: Vec<Arc<LabelSet>> = Vec::new();
        let mut by_key: HashMap<Arc<str>, usize> = HashMap::new();
        let mut keys_of: Vec<Arc<str>> = Vec::new();
        let mut workloads = BTreeMap::new();
        let mut ns_labels: HashMap<&str, (BTreeMap<String, String>, u64)> = HashMap::new();
        for ns in &inventory.namespaces {
            let mut labels = ns.labels.clone();
            labels.insert(NAMESPACE_NAME_LABEL.to_owned(), ns.name.clone());
            let h = super::hash_of(&labels);
            ns_labels.insert(&ns.name, (labels, h));
        }
        let empty = (BTreeMap::new(), 0);
        // Hash of a workload's identity inputs -> label-set indices of this compile.
        let mut seen: HashMap<u64, Vec<usize>> = HashMap::new();
        for w in &inventory.workloads {
            let (nsl, nsh) = ns_labels.get(w.namespace.as_str()).unwrap_or(&empty);
            let h = super::hash_of((&w.namespace, nsh, &w.labels, &w.service_account, &w.ports));
            let same = |ls: &LabelSet| {
                ls.namespace == w.namespace
                    && ls.labels == w.labels
                    && ls.service_account == w.service_account
                    && ls.namespace_labels == *nsl
                    && ls.ports.len() == w.ports.len()
                    && w.ports.iter().all(|p| ls.ports.binary_search(p).is_ok())
            };
            let known = seen
                .get(&h)
                .and_then(|b| b.iter().copied().find(|&i| same(&label_sets[i])));
            let idx = match known {
                Some(i) => i,
                None => {
                    let cached = ls_cache
                        .get(&h)
                        .and_then(|b| b.iter().find(|(ls, _)| same(ls)))
                        .cloned();
                    let (ls, key) = cached.unwrap_or_else(|| {
                        let mut ports = w.ports.clone();
                        ports.sort();
                        let ls = LabelSet {
                            namespace: w.namespace.clone(),
                            namespace_labels: nsl.clone(),
                            labels: w.labels.clone(),
                            service_account: w.service_account.clone(),
                            ports,
                        };
                        let key: Arc<str> = ls.key().into();
                        (Arc::new(ls), key)
                    });
                    let i = *by_key.entry(key.clone()).or_insert_with(|| {
                        label_sets.push(ls);
                        keys_of.push(key);
                        label_sets.len() - 1
                    });
                    seen.entry(h).or_default().push(i);
                    i
                }
            };
            workloads.insert(w.reference(), (idx, w.ips.clone(), w.cgroup.clone()));
        }
        let new_cache: HashMap<u64, Vec<LabelSetEntry>> = seen
            .into_iter()
            .map(|(h, idxs)| {
                (
                    h,
                    idxs.into_iter()
                        .map(|i| (label_sets[i].clone(), keys_of[i].clone()))
                        .collect(),
                )
            })
            .collect();
        *ls_cache = new_cache;
        let mut cidr_set = BTreeSet::new();
        for p in policies {
            for r in &p.rules {
                for peer in r.peers.iter().flatten() {
                    if let ir::Peer::Cidr { net, except } = peer {
                        cidr_set.insert(*net);
                        cidr_set.extend(except.iter().copied());
                    }
                }
            }
        }
        let cidrs: Vec<IpNet> = cidr_set.into_iter().collect();
        let index = CidrIndex::new(&cidrs);
        let mut composite_keys: BTreeMap<(usize, usize), String> = BTreeMap::new();
        for (idx, ips, _) in workloads.values() {
            for ip in ips {
                if let Some(ci) = index.most_specific(*ip) {
                    composite_keys
                        .entry((*idx, ci))
                        .or_insert_with(|| composite_key(&cidrs[ci], &keys_of[*idx]));
                }
            }
        }
        // Only keys the table does not know yet need an allocation (usually none).
        let missing: BTreeSet<String> = keys_of
            .iter()
            .map(|k| k.to_string())
            .chain(cidrs.iter().map(cidr_key))
            .chain(composite_keys.values().cloned())
            .filter(|k| table.get(k).is_none())
            .collect();
        if !missing.is_empty() {
            table.allocate(&missing)?;
        }
        let id = |k: &str| table.get(k).unwrap_or(identity::reserved()[2].0);
        let ls_ids: Vec<u32> = keys_of.iter().map(|k| id(k)).collect();
        let cidr_ids: Vec<u32> = cidrs.iter().map(|c| id(&cidr_key(c))).collect();
        let mut peer_kinds = HashMap::new();
        for (i, v) in ls_ids.iter().enumerate() {
            peer_kinds.insert(*v, PeerKind::Workload(i));
        }
        for (i, v) in cidr_ids.iter().enumerate() {
            peer_kinds.insert(*v, PeerKind::Cidr(i));
        }
        let mut composites = Vec::new();
        let mut composites_of_ls = vec![Vec::new(); label_sets.len()];
        let mut composites_of_cidr = vec![Vec::new(); cidrs.len()];
        let mut comp_index = HashMap::new();
        for ((ls, ci), key) in &composite_keys {
            let v = id(key);
            comp_index.insert((*ls, *ci), v);
            composites_of_ls[*ls].push(composites.len());
            composites_of_cidr[*ci].push(composites.len());
            composites.push((*ls, *ci, v));
            peer_kinds.insert(v, PeerKind::Composite(*ls, *ci));
        }
        // Address trie: CIDRs, then workload addresses (/32, /128).
        let mut addresses = BTreeMap::new();
        let mut v6_covers_v4 = false;
        let mut v4_default = false;
        for (i, c) in cidrs.iter().enumerate() {
            let (addr, prefix_len) = net_bytes(c);
            addresses.insert(AddrPrefix { addr, prefix_len }, cidr_ids[i]);
            match c {
                IpNet::V6(n) => v6_covers_v4 |= n.contains(&mapped_v4_range()),
                IpNet::V4(n) => v4_default |= n.prefix_len() == 0,
            }
        }
        if v6_covers_v4 && !v4_default {
            // An IPv6 CIDR never matches IPv4 addresses: shadow it for the mapped range.
            addresses.insert(
                AddrPrefix {
                    addr: addr_bytes(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
                    prefix_len: 96,
                },
                identity::reserved()[2].0,
            );
        }
        for (idx, ips, _) in workloads.values() {
            for ip in ips {
                let v = match index.most_specific(*ip) {
                    Some(ci) => comp_index[&(*idx, ci)],
                    None => ls_ids[*idx],
                };
                addresses.insert(
                    AddrPrefix {
                        addr: addr_bytes(*ip),
                        prefix_len: 128,
                    },
                    v,
                );
            }
        }
        let mut namespaces: BTreeMap<String, (BTreeMap<String, String>, Vec<usize>)> = inventory
            .namespaces
            .iter()
            .map(|n| {
                (
                    n.name.clone(),
                    (
                        inventory.namespace_labels(&n.name).unwrap_or_default(),
                        Vec::new(),
                    ),
                )
            })
            .collect();
        for (i, ls) in label_sets.iter().enumerate() {
            if let Some(n) = namespaces.get_mut(&ls.namespace) {
                n.1.push(i);
            }
        }
        let mut ns_by_label: HashMap<(String, String), Vec<String>> = HashMap::new();
        for (name, (labels, _)) in &namespaces {
            for (k, v) in labels {
                ns_by_label
                    .entry((k.clone(), v.clone()))
                    .or_default()
                    .push(name.clone());
            }
        }
        let signature = super::hash_of((&label_sets, &ls_ids, &cidrs, &cidr_ids, &composites));
        let ls_index = ls_ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        Ok(Universe {
            signature,
            namespaces,
            ns_by_label,
            label_sets,
            ls_ids,
            cidrs,
            cidr_ids,
            composites,
            composites_of_ls,
            composites_of_cidr,
            peer_kinds,
            workloads,
            addresses,
            subject_cache: HashMap::new(),
            peer_cache: HashMap::new(),
            ls_index,
            ls_keys: keys_of,
            cidr_index: index,
        })
    }

    /// Identity descriptions.
    pub fn infos(&self) -> BTreeMap<u32, IdentityInfo> {
        let mut out: BTreeMap<u32, IdentityInfo> = identity::reserved()
            .into_iter()
            .map(|(n, name)| {
                (
                    n,
                    IdentityInfo::Reserved {
                        name: name.to_owned(),
                    },
                )
            })
            .collect();
        for (i, ls) in self.label_sets.iter().enumerate() {
            out.insert(self.ls_ids[i], IdentityInfo::Workload((**ls).clone()));
        }
        for (i, c) in self.cidrs.iter().enumerate() {
            out.insert(self.cidr_ids[i], IdentityInfo::Cidr { cidr: *c });
        }
        for (ls, ci, v) in &self.composites {
            out.insert(
                *v,
                IdentityInfo::Composite {
                    workload: self.ls_ids[*ls],
                    cidr: self.cidrs[*ci],
                },
            );
        }
        out
    }

    /// Label sets in the namespaces selected by `namespace` (fixed) or `ns_sel` (None: all),
    /// matching `pod_sel` (None: all) and `extra`.
    fn select(
        &self,
        namespace: Option<&str>,
        ns_sel: Option<&LabelSelector>,
        pod_sel: Option<&LabelSelector>,
        extra: impl Fn(&LabelSet) -> bool,
    ) -> Vec<usize> {
        let mut out = Vec::new();
        let mut visit = |labels: &BTreeMap<String, String>, members: &[usize]| {
            if ns_sel.is_none_or(|sel| matches(sel, labels)) {
                for &i in members {
                    let ls = &self.label_sets[i];
                    if pod_sel.is_none_or(|sel| matches(sel, &ls.labels)) && extra(ls) {
                        out.push(i);
                    }
                }
            }
        };
        match namespace {
            Some(n) => {
                if let Some((labels, members)) = self.namespaces.get(n) {
                    visit(labels, members);
                }
            }
            None => {
                // A matchLabels pair narrows the candidate namespaces through the label index.
                let pair = ns_sel
                    .and_then(|sel| sel.match_labels.as_ref())
                    .and_then(|ml| ml.iter().next());
                match pair {
                    Some((k, v)) => {
                        let names = self.ns_by_label.get(&(k.clone(), v.clone()));
                        for n in names.into_iter().flatten() {
                            if let Some((labels, members)) = self.namespaces.get(n) {
                                visit(labels, members);
                            }
                        }
                    }
                    None => {
                        for (labels, members) in self.namespaces.values() {
                            visit(labels, members);
                        }
                    }
                }
            }
        }
        out.sort_unstable();
        out
    }

    /// Cache key of a subject.
    pub fn subject_key(s: &ir::Subject) -> String {
        format!(
            "{:?}|{}|{}|{:?}",
            s.namespace,
            s.namespace_selector
                .as_ref()
                .map(canonical)
                .unwrap_or_default(),
            s.pod_selector.as_ref().map(canonical).unwrap_or_default(),
            s.service_accounts
        )
    }

    /// Whether a subject selects label set `ls`.
    pub fn subject_selects(s: &ir::Subject, ls: &LabelSet) -> bool {
        s.namespace.as_ref().is_none_or(|n| *n == ls.namespace)
            && s.namespace_selector
                .as_ref()
                .is_none_or(|sel| matches(sel, &ls.namespace_labels))
            && s.pod_selector
                .as_ref()
                .is_none_or(|sel| matches(sel, &ls.labels))
            && (s.service_accounts.is_empty() || s.service_accounts.contains(&ls.service_account))
    }

    /// Whether a workload peer selects label set `ls`.
    fn workload_peer_selects(p: &ir::Peer, ls: &LabelSet) -> bool {
        match p {
            ir::Peer::Workloads {
                namespace,
                namespace_selector,
                pod_selector,
                service_account,
            } => {
                namespace.as_ref().is_none_or(|n| *n == ls.namespace)
                    && namespace_selector
                        .as_ref()
                        .is_none_or(|sel| matches(sel, &ls.namespace_labels))
                    && pod_selector
                        .as_ref()
                        .is_none_or(|sel| matches(sel, &ls.labels))
                    && service_account.as_ref().is_none_or(|(ns, name)| {
                        *name == ls.service_account
                            && ns.as_ref().is_none_or(|n| *n == ls.namespace)
                    })
            }
            ir::Peer::Cidr { .. } => false,
        }
    }

    /// Whether a CIDR peer selects policy CIDR `c`.
    fn cidr_peer_selects(p: &ir::Peer, c: &IpNet) -> bool {
        match p {
            ir::Peer::Cidr { net, except } => crate::compile::cidr_selects(net, except, c),
            ir::Peer::Workloads { .. } => false,
        }
    }

    /// Whether a peer list selects peer identity `id` (a pure function of the identity's key,
    /// hence stable across compiles).
    pub fn peers_select_id(&self, peers: &[ir::Peer], id: u32) -> bool {
        match self.peer_kinds.get(&id) {
            Some(PeerKind::Workload(l)) => peers
                .iter()
                .any(|p| Self::workload_peer_selects(p, &self.label_sets[*l])),
            Some(PeerKind::Cidr(ci)) => peers
                .iter()
                .any(|p| Self::cidr_peer_selects(p, &self.cidrs[*ci])),
            Some(PeerKind::Composite(l, ci)) => peers.iter().any(|p| {
                Self::workload_peer_selects(p, &self.label_sets[*l])
                    || Self::cidr_peer_selects(p, &self.cidrs[*ci])
            }),
            None => false,
        }
    }

    /// Carries selector results of an earlier universe (whose identities were `old_ids`) over
    /// to this one: identities of both keep their result (selection depends only on an
    /// identity's key), identities that are gone are dropped, new identities are evaluated.
    pub fn rebase(
        &mut self,
        old_ids: &HashSet<u32>,
        subjects: HashMap<String, SubjectEntry>,
        peers: HashMap<String, PeerEntry>,
    ) {
        let mut added: Vec<u32> = self
            .peer_kinds
            .keys()
            .filter(|id| !old_ids.contains(id))
            .copied()
            .collect();
        added.sort_unstable();
        let added_ls: Vec<(u32, usize)> = added
            .iter()
            .filter_map(|id| self.ls_index.get(id).map(|i| (*id, *i)))
            .collect();
        for (key, (subject, ids)) in subjects {
            let mut v: Vec<u32> = ids
                .iter()
                .copied()
                .filter(|id| self.ls_index.contains_key(id))
                .collect();
            v.extend(
                added_ls
                    .iter()
                    .filter(|(_, i)| Self::subject_selects(&subject, &self.label_sets[*i]))
                    .map(|(id, _)| *id),
            );
            v.sort_unstable();
            self.subject_cache.insert(key, (subject, Arc::new(v)));
        }
        for (key, (list, ids, _)) in peers {
            let mut v: Vec<u32> = ids
                .iter()
                .copied()
                .filter(|id| self.peer_kinds.contains_key(id))
                .collect();
            v.extend(
                added
                    .iter()
                    .copied()
                    .filter(|id| self.peers_select_id(&list, *id)),
            );
            v.sort_unstable();
            let h = super::hash_of(&v);
            self.peer_cache.insert(key, (list, Arc::new(v), h));
        }
    }

    /// Every peer identity (workload, CIDR, composite) of this universe.
    pub fn ids(&self) -> HashSet<u32> {
        self.peer_kinds.keys().copied().collect()
    }

    /// Label-set identities a policy subject selects (cached per distinct subject).
    pub fn subjects(&mut self, s: &ir::Subject) -> (String, Arc<Vec<u32>>) {
        let key = Self::subject_key(s);
        if let Some((_, v)) = self.subject_cache.get(&key) {
            return (key, v.clone());
        }
        let mut v: Vec<u32> = self
            .select(
                s.namespace.as_deref(),
                s.namespace_selector.as_ref(),
                s.pod_selector.as_ref(),
                |ls| {
                    s.service_accounts.is_empty()
                        || s.service_accounts.contains(&ls.service_account)
                },
            )
            .into_iter()
            .map(|i| self.ls_ids[i])
            .collect();
        v.sort_unstable();
        let v = Arc::new(v);
        self.subject_cache
            .insert(key.clone(), (s.clone(), v.clone()));
        (key, v)
    }

    /// Sorted peer identities a list of peers selects, and their hash (cached per distinct
    /// peer list).
    pub fn peers(&mut self, peers: &[ir::Peer]) -> (String, Arc<Vec<u32>>, u64) {
        let key = format!("{peers:?}");
        if let Some((_, v, h)) = self.peer_cache.get(&key) {
            return (key, v.clone(), *h);
        }
        let mut out = BTreeSet::new();
        for p in peers {
            match p {
                ir::Peer::Workloads {
                    namespace,
                    namespace_selector,
                    pod_selector,
                    ..
                } => {
                    let sel = self.select(
                        namespace.as_deref(),
                        namespace_selector.as_ref(),
                        pod_selector.as_ref(),
                        |ls| Self::workload_peer_selects(p, ls),
                    );
                    for i in sel {
                        out.insert(self.ls_ids[i]);
                        out.extend(
                            self.composites_of_ls[i]
                                .iter()
                                .map(|c| self.composites[*c].2),
                        );
                    }
                }
                ir::Peer::Cidr { .. } => {
                    for (ci, c) in self.cidrs.iter().enumerate() {
                        if Self::cidr_peer_selects(p, c) {
                            out.insert(self.cidr_ids[ci]);
                            out.extend(
                                self.composites_of_cidr[ci]
                                    .iter()
                                    .map(|x| self.composites[*x].2),
                            );
                        }
                    }
                }
            }
        }
        let v: Vec<u32> = out.into_iter().collect();
        let h = super::hash_of(&v);
        let v = Arc::new(v);
        self.peer_cache
            .insert(key.clone(), (peers.to_vec(), v.clone(), h));
        (key, v, h)
    }
}

/// A cached label set and its identity key.
pub(crate) type LabelSetEntry = (Arc<LabelSet>, Arc<str>);
/// A cached subject: its definition and the label-set identities it selects.
pub(crate) type SubjectEntry = (ir::Subject, Arc<Vec<u32>>);
/// A cached peer list: its definition, the peer identities it selects, and their hash.
pub(crate) type PeerEntry = (Vec<ir::Peer>, Arc<Vec<u32>>, u64);

/// `::ffff:0:0/96`, the IPv4-mapped range of the address trie.
pub(crate) fn mapped_v4_range() -> ipnet::Ipv6Net {
    ipnet::Ipv6Net::new(std::net::Ipv4Addr::UNSPECIFIED.to_ipv6_mapped(), 96).unwrap_or_default()
}
