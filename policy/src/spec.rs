//! The reference evaluator: the semantics written straight from the specification over the RAW
//! objects (NetworkPolicy, SegmentationPolicy, ClusterSegmentationPolicy and the inventory),
//! without identities, tries, intervals or caches. It is the test oracle: property tests check
//! that [`crate::evaluate()`] over compiled entries gives the same verdict, reason and deciding
//! rule for every flow. It is slow (it scans every policy for every flow) and not meant for
//! production use.
//!
//! Semantics (docs/policy.md "Evaluation"): per side, the applicable rules (subject selects the
//! local workload, direction, window contains the instant, a peer matches, a port matches) are
//! taken in order: Admin tier by priority (deny, then allow, then pass at equal priority; pass
//! skips the rest of the Admin tier); SegmentationPolicy rules by priority (deny before allow);
//! NetworkPolicy rules; then default deny if a namespace-tier policy isolates the workload; then
//! Baseline rules by priority; then allow (not isolated). Remaining ties: policy kind, namespace,
//! name, rule index. Audit-mode policies count only in the hypothetical decision.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use jiff::Timestamp;
use k8s_openapi::api::networking::v1::{NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;

use crate::evaluate::{Flow, Reason, Resolved, Verdict, overall, resolve_endpoints};
use crate::model::{self, Inventory, Mode, ObjectKey, PolicyObject, Workload};
use crate::rules::{Direction, RuleRef};
use crate::selector::matches;
use crate::{PolicySet, Protocol};

/// One side's decision by the oracle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SpecSide {
    /// Verdict.
    pub verdict: Verdict,
    /// Reason.
    pub reason: Reason,
    /// Deciding rule, or isolating policy (index None).
    pub rule: Option<RuleRef>,
}

/// The oracle's decision on a flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SpecDecision {
    /// Overall verdict.
    pub verdict: Verdict,
    /// Egress at the source.
    pub egress: SpecSide,
    /// Ingress at the destination.
    pub ingress: SpecSide,
}

impl From<&crate::Decision> for SpecDecision {
    fn from(d: &crate::Decision) -> Self {
        let side = |s: &crate::SideDecision| SpecSide {
            verdict: s.verdict,
            reason: s.reason,
            rule: s.rule.clone(),
        };
        SpecDecision {
            verdict: d.verdict,
            egress: side(&d.egress),
            ingress: side(&d.ingress),
        }
    }
}

/// A NetworkPolicy rule's peers and ports.
type NetpolRule<'a> = (
    Option<&'a Vec<NetworkPolicyPeer>>,
    Option<&'a Vec<NetworkPolicyPort>>,
);

/// What the local side knows about the other end.
struct PeerView<'a> {
    addr: Option<IpAddr>,
    workload: Option<&'a Workload>,
}

/// 0 = Admin, 1 = namespace tier, 2 = Baseline.
#[derive(Clone, Debug)]
struct Candidate {
    tier: u8,
    netpol: bool,
    priority: i32,
    action: u8, // 0 deny, 1 allow, 2 pass
    key: ObjectKey,
    index: u32,
    audit: bool,
    rule: RuleRef,
}

fn ns_labels(inv: &Inventory, ns: &str) -> BTreeMap<String, String> {
    inv.namespace_labels(ns).unwrap_or_default()
}

fn in_cidr(addr: Option<IpAddr>, cidr: &str, except: &[String]) -> bool {
    let Some(a) = addr else { return false };
    let parse = |s: &str| IpNet::from_str(s).ok().map(|n| n.trunc());
    parse(cidr).is_some_and(|n| n.contains(&a))
        && !except
            .iter()
            .any(|e| parse(e).is_some_and(|n| n.contains(&a)))
}

fn netpol_peer(inv: &Inventory, own_ns: &str, p: &NetworkPolicyPeer, peer: &PeerView<'_>) -> bool {
    if let Some(b) = &p.ip_block {
        return in_cidr(peer.addr, &b.cidr, b.except.as_deref().unwrap_or(&[]));
    }
    let Some(w) = peer.workload else { return false };
    let ns_ok = match &p.namespace_selector {
        Some(sel) => matches(sel, &ns_labels(inv, &w.namespace)),
        None => w.namespace == own_ns,
    };
    ns_ok
        && p.pod_selector
            .as_ref()
            .is_none_or(|sel| matches(sel, &w.labels))
}

fn crd_peer(inv: &Inventory, own_ns: Option<&str>, p: &model::Peer, peer: &PeerView<'_>) -> bool {
    if let Some(c) = &p.cidr {
        return in_cidr(peer.addr, c, p.except.as_deref().unwrap_or(&[]));
    }
    let Some(w) = peer.workload else { return false };
    let ns_ok = match (&p.namespace_selector, own_ns) {
        (Some(sel), _) => matches(sel, &ns_labels(inv, &w.namespace)),
        (None, Some(ns)) => w.namespace == ns,
        (None, None) => true,
    };
    ns_ok
        && p.pod_selector
            .as_ref()
            .is_none_or(|sel| matches(sel, &w.labels))
        && p.service_account.as_ref().is_none_or(|sa| {
            sa.name == w.service_account && sa.namespace.as_ref().is_none_or(|n| *n == w.namespace)
        })
}

/// Whether one port clause (protocol, port, endPort) admits the flow; named ports resolve on
/// `dst`'s ports of the same protocol.
fn port_matches(
    protocol: Option<&String>,
    port: Option<&IntOrString>,
    end: Option<i32>,
    flow: &Flow,
    dst: Option<&Workload>,
) -> bool {
    let proto = protocol.map_or("TCP", String::as_str);
    let flow_proto = match flow.protocol {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
        Protocol::Sctp => "SCTP",
        Protocol::Other => return false,
    };
    if proto != flow_proto {
        return false;
    }
    match port {
        None => true,
        Some(IntOrString::Int(p)) => {
            let p = i64::from(*p);
            let e = end.map_or(p, i64::from);
            (p..=e).contains(&i64::from(flow.port))
        }
        Some(IntOrString::String(name)) => dst.is_some_and(|w| {
            w.ports
                .iter()
                .any(|np| np.name == *name && np.protocol == proto && np.port == flow.port)
        }),
    }
}

fn active(nb: Option<&String>, ea: Option<&String>, at: Timestamp) -> bool {
    let t = |s: Option<&String>| s.and_then(|s| Timestamp::from_str(s).ok());
    t(nb).is_none_or(|n| n <= at) && t(ea).is_none_or(|e| at < e)
}

/// Candidates (applicable rules) and isolating policies `(key, audit, ref)` for one side.
fn collect(
    policies: &PolicySet,
    inv: &Inventory,
    local: &Workload,
    dir: Direction,
    peer: &PeerView<'_>,
    flow: &Flow,
) -> (Vec<Candidate>, Vec<(ObjectKey, bool, RuleRef)>) {
    let mut cands = Vec::new();
    let mut iso = Vec::new();
    let dst = match dir {
        Direction::Ingress => Some(local),
        Direction::Egress => peer.workload,
    };
    let local_ns = ns_labels(inv, &local.namespace);
    for (key, obj) in policies.objects() {
        let policy_ref = RuleRef {
            kind: key.kind,
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            direction: dir,
            index: None,
            rule_name: None,
        };
        let rule_ref = |i: usize, name: Option<&String>| RuleRef {
            index: Some(i as u32),
            rule_name: name.cloned(),
            ..policy_ref.clone()
        };
        match obj {
            PolicyObject::NetworkPolicy(np) => {
                let Some(spec) = &np.spec else { continue };
                let own = key.namespace.as_deref().unwrap_or("");
                if local.namespace != own
                    || !spec
                        .pod_selector
                        .as_ref()
                        .is_none_or(|s| matches(s, &local.labels))
                {
                    continue;
                }
                let types: Vec<String> = match &spec.policy_types {
                    Some(t) if !t.is_empty() => t.clone(),
                    // Egress only for a non-empty egress list, as upstream defaulting.
                    _ if spec.egress.as_ref().is_some_and(|e| !e.is_empty()) => {
                        vec!["Ingress".into(), "Egress".into()]
                    }
                    _ => vec!["Ingress".into()],
                };
                let want = match dir {
                    Direction::Ingress => "Ingress",
                    Direction::Egress => "Egress",
                };
                if !types.iter().any(|t| t == want) {
                    continue;
                }
                iso.push((key.clone(), false, policy_ref.clone()));
                let rules: Vec<NetpolRule<'_>> = match dir {
                    Direction::Ingress => spec
                        .ingress
                        .iter()
                        .flatten()
                        .map(|r| (r.from.as_ref(), r.ports.as_ref()))
                        .collect(),
                    Direction::Egress => spec
                        .egress
                        .iter()
                        .flatten()
                        .map(|r| (r.to.as_ref(), r.ports.as_ref()))
                        .collect(),
                };
                for (i, (peers, ports)) in rules.into_iter().enumerate() {
                    let peer_ok = peers.is_none_or(|ps| {
                        ps.is_empty() || ps.iter().any(|p| netpol_peer(inv, own, p, peer))
                    });
                    let port_ok = ports.is_none_or(|ps| {
                        ps.is_empty()
                            || ps.iter().any(|p| {
                                port_matches(
                                    p.protocol.as_ref(),
                                    p.port.as_ref(),
                                    p.end_port,
                                    flow,
                                    dst,
                                )
                            })
                    });
                    if peer_ok && port_ok {
                        cands.push(Candidate {
                            tier: 1,
                            netpol: true,
                            priority: 0,
                            action: 1,
                            key: key.clone(),
                            index: i as u32,
                            audit: false,
                            rule: rule_ref(i, None),
                        });
                    }
                }
            }
            PolicyObject::Segmentation(sp) => {
                let s = &sp.spec;
                let own = key.namespace.as_deref().unwrap_or("");
                let sas = s.subject.service_accounts.as_deref().unwrap_or(&[]);
                if local.namespace != own
                    || !s
                        .subject
                        .pod_selector
                        .as_ref()
                        .is_none_or(|sel| matches(sel, &local.labels))
                    || !(sas.is_empty() || sas.contains(&local.service_account))
                {
                    continue;
                }
                let list = match dir {
                    Direction::Ingress => &s.ingress,
                    Direction::Egress => &s.egress,
                };
                let Some(list) = list else { continue };
                let audit = s.mode == Mode::Audit;
                iso.push((key.clone(), audit, policy_ref.clone()));
                crd_rules(
                    inv,
                    list,
                    Some(own),
                    1,
                    s.priority,
                    audit,
                    key,
                    dir,
                    peer,
                    flow,
                    dst,
                    &rule_ref,
                    &mut cands,
                );
            }
            PolicyObject::ClusterSegmentation(cp) => {
                let s = &cp.spec;
                let sas = s.subject.service_accounts.as_deref().unwrap_or(&[]);
                if !s
                    .subject
                    .namespace_selector
                    .as_ref()
                    .is_none_or(|sel| matches(sel, &local_ns))
                    || !s
                        .subject
                        .pod_selector
                        .as_ref()
                        .is_none_or(|sel| matches(sel, &local.labels))
                    || !(sas.is_empty() || sas.contains(&local.service_account))
                {
                    continue;
                }
                let list = match dir {
                    Direction::Ingress => &s.ingress,
                    Direction::Egress => &s.egress,
                };
                let tier = if s.tier == model::Tier::Admin { 0 } else { 2 };
                let audit = s.mode == Mode::Audit;
                crd_rules(
                    inv,
                    list.as_deref().unwrap_or(&[]),
                    None,
                    tier,
                    s.priority,
                    audit,
                    key,
                    dir,
                    peer,
                    flow,
                    dst,
                    &rule_ref,
                    &mut cands,
                );
            }
        }
    }
    (cands, iso)
}

#[expect(
    clippy::too_many_arguments,
    reason = "oracle helper shared by both CRD kinds"
)]
fn crd_rules(
    inv: &Inventory,
    list: &[model::Rule],
    own_ns: Option<&str>,
    tier: u8,
    priority: i32,
    audit: bool,
    key: &ObjectKey,
    dir: Direction,
    peer: &PeerView<'_>,
    flow: &Flow,
    dst: Option<&Workload>,
    rule_ref: &dyn Fn(usize, Option<&String>) -> RuleRef,
    cands: &mut Vec<Candidate>,
) {
    for (i, r) in list.iter().enumerate() {
        let peers = match dir {
            Direction::Ingress => &r.from,
            Direction::Egress => &r.to,
        };
        let peer_ok = peers
            .as_ref()
            .is_none_or(|ps| ps.iter().any(|p| crd_peer(inv, own_ns, p, peer)));
        let port_ok = r.ports.as_ref().is_none_or(|ps| {
            ps.is_empty()
                || ps.iter().any(|p| {
                    port_matches(p.protocol.as_ref(), p.port.as_ref(), p.end_port, flow, dst)
                })
        });
        if peer_ok && port_ok && active(r.not_before.as_ref(), r.expires_at.as_ref(), flow.at) {
            let action = match r.action {
                model::Action::Deny => 0,
                model::Action::Allow => 1,
                model::Action::Pass => 2,
            };
            cands.push(Candidate {
                tier,
                netpol: false,
                priority,
                action,
                key: key.clone(),
                index: i as u32,
                audit,
                rule: rule_ref(i, r.name.as_ref()),
            });
        }
    }
}

/// The precedence walk over sorted candidates; `isolator` = the isolating policy, if any.
fn decide(cands: &[&Candidate], isolator: Option<&RuleRef>) -> (Verdict, Reason, Option<RuleRef>) {
    let tier = |t: u8| cands.iter().filter(move |c| c.tier == t);
    // Admin tier: first rule decides; pass leaves the tier.
    if let Some(c) = tier(0).next()
        && c.action != 2
    {
        return verdict_of(c);
    }
    if let Some(c) = tier(1).next() {
        return verdict_of(c);
    }
    if let Some(i) = isolator {
        return (Verdict::Deny, Reason::DefaultDeny, Some(i.clone()));
    }
    if let Some(c) = tier(2).next() {
        return verdict_of(c);
    }
    (Verdict::Allow, Reason::NotIsolated, None)
}

fn verdict_of(c: &Candidate) -> (Verdict, Reason, Option<RuleRef>) {
    if c.action == 0 {
        (Verdict::Deny, Reason::DeniedByRule, Some(c.rule.clone()))
    } else {
        (Verdict::Allow, Reason::AllowedByRule, Some(c.rule.clone()))
    }
}

fn side(
    policies: &PolicySet,
    inv: &Inventory,
    dir: Direction,
    local: &Resolved,
    peer: &Resolved,
    flow: &Flow,
) -> SpecSide {
    let Some(w) = local.workload.as_ref().and_then(|r| inv.workload(r)) else {
        return SpecSide {
            verdict: Verdict::Allow,
            reason: Reason::NotManaged,
            rule: None,
        };
    };
    let pv = PeerView {
        addr: peer.addr,
        workload: peer.addr.and_then(|a| inv.workload_by_ip(a)),
    };
    let (mut cands, mut iso) = collect(policies, inv, w, dir, &pv, flow);
    cands.sort_by(|a, b| {
        (a.tier, a.netpol, a.priority, a.action, &a.key, a.index)
            .cmp(&(b.tier, b.netpol, b.priority, b.action, &b.key, b.index))
    });
    iso.sort_by(|a, b| a.0.cmp(&b.0));
    let actual_c: Vec<&Candidate> = cands.iter().filter(|c| !c.audit).collect();
    let all_c: Vec<&Candidate> = cands.iter().collect();
    let actual = decide(&actual_c, iso.iter().find(|i| !i.1).map(|i| &i.2));
    if actual.0 == Verdict::Deny {
        return SpecSide {
            verdict: actual.0,
            reason: actual.1,
            rule: actual.2,
        };
    }
    let hypo = decide(&all_c, iso.first().map(|i| &i.2));
    if hypo.0 == Verdict::Deny {
        return SpecSide {
            verdict: Verdict::Audit,
            reason: hypo.1,
            rule: hypo.2,
        };
    }
    SpecSide {
        verdict: actual.0,
        reason: actual.1,
        rule: actual.2,
    }
}

/// Decides `flow` from the raw objects (the oracle).
pub fn evaluate(policies: &PolicySet, inventory: &Inventory, flow: &Flow) -> SpecDecision {
    let (src, dst) = resolve_endpoints(
        flow,
        |w| inventory.workload(w).map(|w| w.ips.clone()),
        |ip| inventory.workload_by_ip(ip).map(Workload::reference),
    );
    let egress = side(policies, inventory, Direction::Egress, &src, &dst, flow);
    let ingress = side(policies, inventory, Direction::Ingress, &dst, &src, flow);
    SpecDecision {
        verdict: overall(egress.verdict, ingress.verdict),
        egress,
        ingress,
    }
}
