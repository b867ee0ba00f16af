//! The evaluator: decides a [`Flow`] by reading ONLY the compiled entries, with the kernel's
//! lookup order (design.md "The decision"). `enforcer trace` prints its [`Decision`].
//!
//! Which address a workload endpoint presents to the other side: when the other endpoint is an
//! address, its first address of that address's family; when both are workloads, the first
//! IPv4 address of each if both have one, else the first IPv6 address of each if both have one,
//! else the first address of each. A workload without a usable address presents none, and the
//! other side sees it as `WORLD`. An address that belongs to an inventory workload is that
//! workload.

use std::net::IpAddr;

use enforcer_common::{
    DefaultKey, POLICY_KEY_FIXED_BITS, POLICY_KEY_FULL_BITS, PROTO_OTHER, PROTO_SCTP, PROTO_TCP,
    PROTO_UDP, PolicyKey, PolicyValue, REASON_ALLOWED_BY_RULE, REASON_DEFAULT_DENY,
    REASON_DENIED_BY_RULE, VERDICT_AUDIT, VERDICT_DENY, identity,
};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::compile::{AddrPrefix, CompiledState, PolicyEntryKey, nanos};
use crate::identity::addr_bytes;
use crate::model::WorkloadRef;
use crate::rules::{Direction, RuleRef};

/// Transport protocol of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
    /// Any protocol without ports (ICMP, ...): only all-ports rules match it.
    Other,
}

impl Protocol {
    /// The IP protocol number used in policy keys (`PROTO_OTHER` for [`Protocol::Other`]).
    pub fn to_raw(self) -> u8 {
        match self {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
            Protocol::Sctp => PROTO_SCTP,
            Protocol::Other => PROTO_OTHER,
        }
    }
}

/// One end of a flow.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Endpoint {
    /// An inventory workload.
    Workload(WorkloadRef),
    /// An address (that of a workload, if some workload owns it).
    Ip(IpAddr),
}

/// A connection to decide.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    /// Client.
    pub src: Endpoint,
    /// Server.
    pub dst: Endpoint,
    /// Protocol.
    pub protocol: Protocol,
    /// Destination (server) port; ignored for [`Protocol::Other`].
    pub port: u16,
    /// Instant of the connection.
    pub at: Timestamp,
}

/// A verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Verdict {
    /// Allowed.
    Allow,
    /// Denied.
    Deny,
    /// Allowed, but an audit-mode policy would have denied it.
    Audit,
}

/// Why a side decided as it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Reason {
    /// A rule allowed it.
    AllowedByRule,
    /// A rule denied it.
    DeniedByRule,
    /// The side is isolated and no rule matched.
    DefaultDeny,
    /// No policy isolates the side.
    NotIsolated,
    /// The endpoint is not an inventory workload: nothing is enforced there.
    NotManaged,
}

/// The decision of one enforcement point.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SideDecision {
    /// Egress (at the source) or ingress (at the destination).
    pub direction: Direction,
    /// Verdict.
    pub verdict: Verdict,
    /// Reason (for `Audit`: why the audit-mode policy would deny).
    pub reason: Reason,
    /// The deciding rule or isolating policy.
    pub rule: Option<RuleRef>,
    /// Its id (0: none).
    pub rule_id: u32,
    /// The local workload, if the endpoint is one.
    pub local: Option<WorkloadRef>,
    /// The local identity, if managed.
    pub local_identity: Option<u32>,
    /// The address the peer presents, if any.
    pub peer_address: Option<IpAddr>,
    /// The peer identity the address resolves to (if managed).
    pub peer_identity: Option<u32>,
}

/// The decision on a flow: both sides and the overall verdict (deny if either side denies, audit
/// if a side audits and none denies).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Overall verdict.
    pub verdict: Verdict,
    /// Egress decision at the source.
    pub egress: SideDecision,
    /// Ingress decision at the destination.
    pub ingress: SideDecision,
}

/// An endpoint resolved to (workload, presented address).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Resolved {
    pub workload: Option<WorkloadRef>,
    pub addr: Option<IpAddr>,
}

/// Resolves both endpoints of `flow` (see the module docs for the address rule).
pub(crate) fn resolve_endpoints(
    flow: &Flow,
    ips_of: impl Fn(&WorkloadRef) -> Option<Vec<IpAddr>>,
    owner_of: impl Fn(IpAddr) -> Option<WorkloadRef>,
) -> (Resolved, Resolved) {
    let first = |ips: &[IpAddr], v4: bool| ips.iter().find(|ip| ip.is_ipv4() == v4).copied();
    // An IPv4-mapped IPv6 address is the IPv4 address (as in the kernel's address trie).
    let canonical = |e: &Endpoint| match e {
        Endpoint::Ip(ip) => Endpoint::Ip(ip.to_canonical()),
        other => other.clone(),
    };
    let (src, dst) = (canonical(&flow.src), canonical(&flow.dst));
    match (&src, &dst) {
        (Endpoint::Ip(a), Endpoint::Ip(b)) => (
            Resolved {
                workload: owner_of(*a),
                addr: Some(*a),
            },
            Resolved {
                workload: owner_of(*b),
                addr: Some(*b),
            },
        ),
        (Endpoint::Workload(w), Endpoint::Ip(b)) | (Endpoint::Ip(b), Endpoint::Workload(w)) => {
            let ips = ips_of(w);
            let wl = Resolved {
                workload: ips.as_ref().map(|_| w.clone()),
                addr: ips.as_deref().and_then(|ips| first(ips, b.is_ipv4())),
            };
            let ip = Resolved {
                workload: owner_of(*b),
                addr: Some(*b),
            };
            if matches!(src, Endpoint::Workload(_)) {
                (wl, ip)
            } else {
                (ip, wl)
            }
        }
        (Endpoint::Workload(a), Endpoint::Workload(b)) => {
            let (ia, ib) = (ips_of(a), ips_of(b));
            let (la, lb) = (
                ia.clone().unwrap_or_default(),
                ib.clone().unwrap_or_default(),
            );
            let (aa, ab) = if let (Some(x), Some(y)) = (first(&la, true), first(&lb, true)) {
                (Some(x), Some(y))
            } else if let (Some(x), Some(y)) = (first(&la, false), first(&lb, false)) {
                (Some(x), Some(y))
            } else {
                (la.first().copied(), lb.first().copied())
            };
            (
                Resolved {
                    workload: ia.map(|_| a.clone()),
                    addr: aa,
                },
                Resolved {
                    workload: ib.map(|_| b.clone()),
                    addr: ab,
                },
            )
        }
    }
}

/// Combines both sides into the overall verdict.
pub(crate) fn overall(egress: Verdict, ingress: Verdict) -> Verdict {
    if egress == Verdict::Deny || ingress == Verdict::Deny {
        Verdict::Deny
    } else if egress == Verdict::Audit || ingress == Verdict::Audit {
        Verdict::Audit
    } else {
        Verdict::Allow
    }
}

/// Longest-prefix lookup in the address trie; `WORLD` on a miss.
pub fn lookup_address(state: &CompiledState, ip: IpAddr) -> u32 {
    let bytes = u128::from_be_bytes(addr_bytes(ip));
    for len in (0..=128u32).rev() {
        let mask = if len == 0 {
            0
        } else {
            u128::MAX << (128 - len)
        };
        let addr = (bytes & mask).to_be_bytes();
        if let Some(id) = state.addresses.get(&AddrPrefix {
            addr,
            prefix_len: len,
        }) {
            return *id;
        }
    }
    identity::WORLD
}

/// Longest-prefix lookup in the policy trie; an entry outside its window is a miss.
fn lookup_policy(state: &CompiledState, key: PolicyKey, at_ns: u64) -> Option<PolicyValue> {
    let port = u16::from_be_bytes(key.port_be);
    for len in (POLICY_KEY_FIXED_BITS..=POLICY_KEY_FULL_BITS).rev() {
        let bits = len - POLICY_KEY_FIXED_BITS;
        let mask = if bits == 0 {
            0
        } else {
            u16::MAX << (16 - bits)
        };
        let k = PolicyKey {
            port_be: (port & mask).to_be_bytes(),
            ..key
        };
        if let Some(v) = state.policy.get(&PolicyEntryKey {
            key: k,
            prefix_len: len,
        }) {
            return (v.not_before <= at_ns && at_ns < v.expires_at).then_some(*v);
        }
    }
    None
}

/// The kernel's decision for local identity `local` (design.md "The decision", steps 1-5).
pub fn decide_raw(
    state: &CompiledState,
    local: u32,
    dir: Direction,
    peer: u32,
    protocol: Protocol,
    port: u16,
    at: Timestamp,
) -> Option<PolicyValue> {
    let at_ns = nanos(at);
    let port = if protocol == Protocol::Other { 0 } else { port };
    let key = PolicyKey {
        local_identity: local,
        peer_identity: peer,
        direction: dir.to_raw(),
        protocol: protocol.to_raw(),
        port_be: port.to_be_bytes(),
    };
    lookup_policy(state, key, at_ns)
        .or_else(|| {
            lookup_policy(
                state,
                PolicyKey {
                    peer_identity: identity::ANY,
                    ..key
                },
                at_ns,
            )
        })
        .or_else(|| {
            state
                .defaults
                .get(&DefaultKey {
                    local_identity: local,
                    direction: dir.to_raw(),
                    _pad: [0; 3],
                })
                .copied()
        })
}

fn side(
    state: &CompiledState,
    dir: Direction,
    local: &Resolved,
    peer: &Resolved,
    flow: &Flow,
) -> SideDecision {
    let managed = local
        .workload
        .as_ref()
        .and_then(|w| state.workloads.get(w).map(|c| (w, c.identity)));
    let Some((w, local_id)) = managed else {
        return SideDecision {
            direction: dir,
            verdict: Verdict::Allow,
            reason: Reason::NotManaged,
            rule: None,
            rule_id: 0,
            local: None,
            local_identity: None,
            peer_address: peer.addr,
            peer_identity: None,
        };
    };
    let peer_id = peer
        .addr
        .map_or(identity::WORLD, |a| lookup_address(state, a));
    let value = decide_raw(
        state,
        local_id,
        dir,
        peer_id,
        flow.protocol,
        flow.port,
        flow.at,
    );
    let (verdict, reason, rule_id) = match value {
        None => (Verdict::Allow, Reason::NotIsolated, 0),
        Some(v) => {
            let verdict = match v.verdict {
                VERDICT_DENY => Verdict::Deny,
                VERDICT_AUDIT => Verdict::Audit,
                _ => Verdict::Allow,
            };
            let reason = match v.reason {
                REASON_ALLOWED_BY_RULE => Reason::AllowedByRule,
                REASON_DENIED_BY_RULE => Reason::DeniedByRule,
                REASON_DEFAULT_DENY => Reason::DefaultDeny,
                _ => Reason::NotIsolated,
            };
            (verdict, reason, v.rule_id)
        }
    };
    SideDecision {
        direction: dir,
        verdict,
        reason,
        rule: state.rules.get(&rule_id).cloned(),
        rule_id,
        local: Some(w.clone()),
        local_identity: Some(local_id),
        peer_address: peer.addr,
        peer_identity: Some(peer_id),
    }
}

/// Decides `flow` from the compiled entries alone.
pub fn evaluate(state: &CompiledState, flow: &Flow) -> Decision {
    let (src, dst) = resolve_endpoints(
        flow,
        |w| state.workloads.get(w).map(|c| c.ips.clone()),
        |ip| {
            state
                .workloads
                .iter()
                .find(|(_, c)| c.ips.contains(&ip))
                .map(|(r, _)| r.clone())
        },
    );
    let egress = side(state, Direction::Egress, &src, &dst, flow);
    let ingress = side(state, Direction::Ingress, &dst, &src, flow);
    Decision {
        verdict: overall(egress.verdict, ingress.verdict),
        egress,
        ingress,
    }
}
