//! A synthetic cluster's compiled state, for measuring the hub at scale without compiling
//! policies: `nodes` nodes with `pods_per_node` pods each, every pod one of `identities`
//! identities, `entries_per_identity` ingress entries per identity (peers among the
//! identities, one port each), an isolation default per identity, one address per pod.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use bulkhead_policy::{
    AddrPrefix, CompiledState, CompiledWorkload, Direction, Kind, PolicyEntryKey, RuleRef,
    WorkloadRef,
};
use enforcer_common::identity::FIRST_WORKLOAD;
use enforcer_common::{
    DIR_INGRESS, DefaultKey, POLICY_KEY_FULL_BITS, PROTO_TCP, PolicyKey, PolicyValue,
    REASON_ALLOWED_BY_RULE, REASON_DEFAULT_DENY, VERDICT_ALLOW, VERDICT_DENY,
};

use super::NodeAssignment;

/// Shape of a synthetic cluster.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Nodes.
    pub nodes: usize,
    /// Pods per node.
    pub pods_per_node: usize,
    /// Distinct pod identities.
    pub identities: u32,
    /// Policy entries per identity.
    pub entries_per_identity: u32,
    /// Policies (one rule each; entries cite them round robin).
    pub policies: u32,
}

impl Shape {
    /// The target: 5,000 nodes, 50,000 pods, 2,000 policies.
    pub const TARGET: Shape = Shape {
        nodes: 5_000,
        pods_per_node: 10,
        identities: 5_000,
        entries_per_identity: 20,
        policies: 2_000,
    };
}

fn rule(i: u32) -> RuleRef {
    RuleRef {
        kind: Kind::SegmentationPolicy,
        namespace: Some(format!("ns-{}", i % 100)),
        name: format!("policy-{i}"),
        direction: Direction::Ingress,
        index: Some(0),
        rule_name: None,
    }
}

/// The state and node assignment of a synthetic cluster; `port_shift` changes the port of
/// identity `FIRST_WORKLOAD`'s entries (a one-policy change touching one identity).
pub fn synthetic(shape: Shape, port_shift: u16) -> (CompiledState, NodeAssignment) {
    let mut state = CompiledState::default();
    let rules: Vec<RuleRef> = (0..shape.policies).map(rule).collect();
    for r in &rules {
        state.rules.insert(r.id(), r.clone());
    }
    let rule_ids: Vec<u32> = rules.iter().map(RuleRef::id).collect();
    for i in 0..shape.identities {
        let local = FIRST_WORKLOAD + i;
        for e in 0..shape.entries_per_identity {
            let shift = if i == 0 { port_shift } else { 0 };
            let port = 1000 + u16::try_from(e).unwrap_or(0) + shift;
            let key = PolicyEntryKey {
                key: PolicyKey {
                    local_identity: local,
                    peer_identity: FIRST_WORKLOAD + (i + e + 1) % shape.identities,
                    direction: DIR_INGRESS,
                    protocol: PROTO_TCP,
                    port_be: port.to_be_bytes(),
                },
                prefix_len: POLICY_KEY_FULL_BITS,
            };
            let value = PolicyValue {
                verdict: VERDICT_ALLOW,
                reason: REASON_ALLOWED_BY_RULE,
                _pad: [0; 2],
                rule_id: rule_ids[((i + e) % shape.policies) as usize],
                not_before: 0,
                expires_at: u64::MAX,
            };
            state.policy.insert(key, value);
        }
        let key = DefaultKey {
            local_identity: local,
            direction: DIR_INGRESS,
            _pad: [0; 3],
        };
        let value = PolicyValue {
            verdict: VERDICT_DENY,
            reason: REASON_DEFAULT_DENY,
            _pad: [0; 2],
            rule_id: rule_ids[(i % shape.policies) as usize],
            not_before: 0,
            expires_at: u64::MAX,
        };
        state.defaults.insert(key, value);
    }
    let mut assignment: NodeAssignment = BTreeMap::new();
    let mut pod = 0u32;
    for n in 0..shape.nodes {
        let pods = assignment.entry(format!("node-{n:05}")).or_default();
        for _ in 0..shape.pods_per_node {
            let identity = FIRST_WORKLOAD + pod % shape.identities;
            let ip = Ipv4Addr::from(0x0a00_0000 + pod);
            let w = WorkloadRef::new(format!("ns-{}", pod % 100), format!("pod-{pod}"));
            state.addresses.insert(
                AddrPrefix {
                    addr: ip.to_ipv6_mapped().octets(),
                    prefix_len: 128,
                },
                identity,
            );
            state.workloads.insert(
                w.clone(),
                CompiledWorkload {
                    identity,
                    cgroup: None,
                    ips: vec![ip.into()],
                },
            );
            pods.insert(w, format!("uid-{pod}"));
            pod += 1;
        }
    }
    (state, assignment)
}
