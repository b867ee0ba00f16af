//! Structural tests of the compiled state: entry shape, nothing written that the fallback already
//! gives, size independent of pods per identity.

use enforcer_common::{DefaultKey, POLICY_KEY_FULL_BITS, identity::ANY};

use super::*;
use crate::evaluate::decide_raw;
use crate::{Inventory, PolicySet, Protocol};

const POLICIES: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress:
    - from: [{podSelector: {matchLabels: {app: b}}}, {ipBlock: {cidr: 10.0.0.0/8, except: [10.0.1.0/24]}}]
      ports: [{port: 80}, {port: 8000, endPort: 8999}, {port: http}]
  egress: [{ports: [{port: http}, {protocol: UDP, port: 53}]}]
---
apiVersion: bulkhead.dev/v1alpha1
kind: SegmentationPolicy
metadata: {name: sp, namespace: x}
spec:
  priority: 3
  subject: {podSelector: {matchLabels: {app: a}}}
  ingress:
    - {action: Deny, from: [{cidr: 10.0.0.0/16}], ports: [{port: 8080}], expiresAt: "2026-11-27T18:00:00Z"}
---
apiVersion: bulkhead.dev/v1alpha1
kind: ClusterSegmentationPolicy
metadata: {name: base}
spec:
  tier: Baseline
  egress: [{action: Deny, to: [{cidr: 192.0.2.0/24}]}]
"#;

fn inventory(extra_a: usize) -> Inventory {
    let mut text = String::from(
        "namespaces: [{name: x}, {name: y}]\nworkloads:\n  - {namespace: x, name: b, labels: {app: b}, ips: [10.0.0.2], ports: [{name: http, port: 8080}]}\n  - {namespace: y, name: c, ips: [10.0.1.3]}\n",
    );
    for i in 0..=extra_a {
        text.push_str(&format!(
            "  - {{namespace: x, name: a{i}, labels: {{app: a}}, ips: [10.0.2.{}], ports: [{{name: http, port: 9090}}]}}\n",
            i + 1
        ));
    }
    Inventory::from_yaml_str("inv.yaml", &text).unwrap()
}

fn state(extra_a: usize) -> CompiledState {
    let set = PolicySet::from_yaml_str("p.yaml", POLICIES).unwrap();
    Compiler::default()
        .compile(
            &set,
            &inventory(extra_a),
            "2026-11-27T12:00:00Z".parse().unwrap(),
        )
        .unwrap()
}

#[test]
fn entries_are_prefix_aligned_blocks() {
    let s = state(0);
    assert!(!s.policy.is_empty());
    for k in s.policy.keys() {
        assert!((80..=96).contains(&k.prefix_len), "{k:?}");
        let port = u16::from_be_bytes(k.key.port_be);
        let host_bits = POLICY_KEY_FULL_BITS - k.prefix_len;
        assert_eq!(
            u32::from(port) & ((1u32 << host_bits) - 1),
            0,
            "{k:?} is not aligned"
        );
        if k.key.protocol == PROTO_OTHER {
            assert_eq!(
                (port, k.prefix_len),
                (0, 80),
                "port-less protocols only get all-ports entries"
            );
        }
    }
}

#[test]
fn nothing_is_written_that_the_fallback_already_gives() {
    let s = state(0);
    let at: Timestamp = "2026-11-27T12:00:00Z".parse().unwrap();
    let proto = |p: u8| match p {
        PROTO_TCP => Protocol::Tcp,
        PROTO_UDP => Protocol::Udp,
        PROTO_SCTP => Protocol::Sctp,
        _ => Protocol::Other,
    };
    let dir = |d: u8| {
        if d == enforcer_common::DIR_INGRESS {
            Direction::Ingress
        } else {
            Direction::Egress
        }
    };
    for (k, v) in &s.policy {
        let port = u16::from_be_bytes(k.key.port_be);
        let (d, p) = (dir(k.key.direction), proto(k.key.protocol));
        let fallback = if k.key.peer_identity == ANY {
            s.defaults
                .get(&DefaultKey {
                    local_identity: k.key.local_identity,
                    direction: k.key.direction,
                    _pad: [0; 3],
                })
                .copied()
        } else {
            decide_raw(&s, k.key.local_identity, d, ANY, p, port, at)
        };
        let fallback = fallback.unwrap_or_else(resolve::not_isolated);
        assert_ne!(*v, fallback, "{k:?} repeats its fallback");
    }
    for v in s.defaults.values() {
        assert_ne!(*v, resolve::not_isolated());
    }
}

#[test]
fn size_does_not_depend_on_pods_per_identity() {
    let one = state(0);
    let many = state(40);
    assert_eq!(one.policy, many.policy);
    assert_eq!(one.defaults, many.defaults);
    assert_eq!(many.workloads.len(), one.workloads.len() + 40);
    let ids: std::collections::BTreeSet<u32> =
        many.workloads.values().map(|w| w.identity).collect();
    assert_eq!(ids.len(), 3);
}

#[test]
fn windowed_entries_carry_their_boundaries() {
    let s = state(0);
    let end = nanos("2026-11-27T18:00:00Z".parse().unwrap());
    let windowed: Vec<_> = s
        .policy
        .values()
        .filter(|v| v.expires_at != u64::MAX)
        .collect();
    assert!(!windowed.is_empty());
    assert!(
        windowed
            .iter()
            .all(|v| v.expires_at == end && v.not_before == 0)
    );
    assert_eq!(s.next_change, Some("2026-11-27T18:00:00Z".parse().unwrap()));
}

#[test]
fn composite_identities_for_pod_addresses_inside_policy_cidrs() {
    let s = state(0);
    // 10.0.0.2 (x/b) lies in 10.0.0.0/16 (most specific policy CIDR): composite identity.
    let b = crate::evaluate::lookup_address(&s, "10.0.0.2".parse().unwrap());
    match &s.identities[&b] {
        IdentityInfo::Composite { workload, cidr } => {
            assert_eq!(*workload, s.workloads[&WorkloadRef::new("x", "b")].identity);
            assert_eq!(cidr.to_string(), "10.0.0.0/16");
        }
        other => panic!("unexpected {other:?}"),
    }
    // 10.0.1.3 (y/c) lies in the except 10.0.1.0/24, which has its own identity.
    let c = crate::evaluate::lookup_address(&s, "10.0.1.3".parse().unwrap());
    assert!(
        matches!(&s.identities[&c], IdentityInfo::Composite { cidr, .. } if cidr.to_string() == "10.0.1.0/24")
    );
    // An address outside every CIDR is WORLD.
    assert_eq!(
        crate::evaluate::lookup_address(&s, "198.51.100.1".parse().unwrap()),
        enforcer_common::identity::WORLD
    );
    assert!(
        s.identities
            .keys()
            .any(|k| *k >= enforcer_common::identity::FIRST_CIDR)
    );
}
