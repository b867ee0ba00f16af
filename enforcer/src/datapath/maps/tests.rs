//! The write order of an update, replayed on a model of the maps: after every single write,
//! every flow is decided as the old state or as the new one decides it, never otherwise.

use std::collections::BTreeMap;

use enforcer_common::{
    DIR_EGRESS, DIR_INGRESS, POLICY_KEY_FIXED_BITS, PROTO_TCP, REASON_ALLOWED_BY_RULE,
    REASON_DEFAULT_DENY, REASON_DENIED_BY_RULE, REASON_NOT_ISOLATED, TIME_UNBOUNDED_END,
    VERDICT_ALLOW, VERDICT_DENY,
};
use proptest::prelude::*;

use super::*;

const LOCALS: [u32; 2] = [256, 257];
const PEERS: [u32; 2] = [258, 259];
const DIRECTIONS: [u8; 2] = [DIR_INGRESS, DIR_EGRESS];
/// Ports that fall in different blocks of the prefixes below (80/81 share a /95).
const PORTS: [u16; 4] = [80, 81, 443, 8080];
/// Prefix lengths over the 96-bit key: every port, a pair of ports, one port.
const PREFIXES: [u32; 3] = [POLICY_KEY_FIXED_BITS, POLICY_KEY_FIXED_BITS + 15, 96];

fn value(verdict: u8, rule_id: u32) -> PolicyValue {
    PolicyValue {
        verdict,
        reason: if verdict == VERDICT_ALLOW {
            REASON_ALLOWED_BY_RULE
        } else {
            REASON_DENIED_BY_RULE
        },
        _pad: [0; 2],
        rule_id,
        not_before: 0,
        expires_at: TIME_UNBOUNDED_END,
    }
}

fn policy_key(local: u32, peer: u32, direction: u8, port: u16, len: u32) -> (PolicyKey, u32) {
    let mask = u16::MAX.checked_shl(96 - len).unwrap_or(0);
    let key = PolicyKey {
        local_identity: local,
        peer_identity: peer,
        direction,
        protocol: PROTO_TCP,
        port_be: (port & mask).to_be_bytes(),
    };
    (key, len)
}

/// The kernel's decision (docs/design.md, "The decision") over a model of the maps.
fn decide(maps: &DesiredMaps, local: u32, peer: u32, direction: u8, port: u16) -> PolicyValue {
    for p in [peer, identity::ANY] {
        let hit = PREFIXES
            .iter()
            .rev()
            .find_map(|&len| maps.policy.get(&policy_key(local, p, direction, port, len)));
        if let Some(v) = hit {
            return *v;
        }
    }
    let default = DefaultKey {
        local_identity: local,
        direction,
        _pad: [0; 3],
    };
    maps.defaults.get(&default).copied().unwrap_or(PolicyValue {
        verdict: VERDICT_ALLOW,
        reason: REASON_NOT_ISOLATED,
        ..value(VERDICT_ALLOW, 0)
    })
}

fn decisions(maps: &DesiredMaps) -> Vec<PolicyValue> {
    let mut out = Vec::new();
    for local in LOCALS {
        for peer in PEERS {
            for direction in DIRECTIONS {
                for port in PORTS {
                    out.push(decide(maps, local, peer, direction, port));
                }
            }
        }
    }
    out
}

fn replay(maps: &mut DesiredMaps, step: &Step) {
    match *step {
        Step::Policy(k, Some(v)) => drop(maps.policy.insert(k, v)),
        Step::Policy(k, None) => drop(maps.policy.remove(&k)),
        Step::Default(k, Some(v)) => drop(maps.defaults.insert(k, v)),
        Step::Default(k, None) => drop(maps.defaults.remove(&k)),
        Step::Address(k, Some(v)) => drop(maps.addresses.insert(k, v)),
        Step::Address(k, None) => drop(maps.addresses.remove(&k)),
        Step::Workload(k, Some(v)) => drop(maps.workloads.insert(k, v)),
        Step::Workload(k, None) => drop(maps.workloads.remove(&k)),
        Step::Config(c) => maps.revision = c.revision,
    }
}

/// Random policy and default entries over the small universe above.
fn maps_strategy(revision: u64) -> impl Strategy<Value = DesiredMaps> {
    let peers = [identity::ANY, PEERS[0], PEERS[1]];
    let policy = proptest::collection::btree_map(
        (
            proptest::sample::select(LOCALS.to_vec()),
            proptest::sample::select(peers.to_vec()),
            proptest::sample::select(DIRECTIONS.to_vec()),
            proptest::sample::select(PORTS.to_vec()),
            proptest::sample::select(PREFIXES.to_vec()),
        )
            .prop_map(|(l, p, d, port, len)| policy_key(l, p, d, port, len)),
        (any::<bool>(), 1u32..4).prop_map(|(allow, rule)| {
            value(if allow { VERDICT_ALLOW } else { VERDICT_DENY }, rule)
        }),
        0..10,
    );
    let defaults = proptest::collection::btree_map(
        (
            proptest::sample::select(LOCALS.to_vec()),
            proptest::sample::select(DIRECTIONS.to_vec()),
        )
            .prop_map(|(local_identity, direction)| DefaultKey {
                local_identity,
                direction,
                _pad: [0; 3],
            }),
        (1u32..3).prop_map(|rule| PolicyValue {
            reason: REASON_DEFAULT_DENY,
            ..value(VERDICT_DENY, 100 + rule)
        }),
        0..3,
    );
    (policy, defaults).prop_map(move |(policy, defaults)| DesiredMaps {
        revision,
        policy,
        defaults,
        ..DesiredMaps::default()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_write_leaves_each_flow_decided_as_before_or_as_after(
        old in maps_strategy(1),
        new in maps_strategy(2),
    ) {
        let before = decisions(&old);
        let after = decisions(&new);
        let (steps, _) = plan(&old, &new, 0);
        let mut maps = old.clone();
        for (i, step) in steps.iter().enumerate() {
            replay(&mut maps, step);
            let now = decisions(&maps);
            for (flow, decided) in now.iter().enumerate() {
                prop_assert!(
                    *decided == before[flow] || *decided == after[flow],
                    "flow {flow} after step {i} ({step:?}): {decided:?}, \
                     neither {:?} nor {:?}",
                    before[flow],
                    after[flow]
                );
            }
        }
        prop_assert_eq!(maps, new);
    }
}

#[test]
fn removing_isolation_with_its_allow_never_denies_the_allowed_flow() {
    // The case a review found: the allow deleted before the isolation default left a window
    // where the flow fell through to the default deny.
    let allow = policy_key(256, 258, DIR_EGRESS, 80, 96);
    let default = DefaultKey {
        local_identity: 256,
        direction: DIR_EGRESS,
        _pad: [0; 3],
    };
    let mut old = DesiredMaps {
        revision: 1,
        ..DesiredMaps::default()
    };
    old.policy.insert(allow, value(VERDICT_ALLOW, 1));
    old.defaults.insert(default, value(VERDICT_DENY, 2));
    let new = DesiredMaps {
        revision: 2,
        ..DesiredMaps::default()
    };
    let (steps, stats) = plan(&old, &new, 0);
    let deletions: Vec<_> = steps
        .iter()
        .filter(|s| !matches!(s, Step::Config(_)))
        .collect();
    assert_eq!(
        deletions,
        [&Step::Default(default, None), &Step::Policy(allow, None)]
    );
    assert_eq!((stats.policy.deleted, stats.defaults.deleted), (1, 1));
}

#[test]
fn a_peer_allow_is_written_before_the_any_deny_it_overrides() {
    let old = DesiredMaps::default();
    let mut new = DesiredMaps {
        revision: 1,
        ..DesiredMaps::default()
    };
    let any = policy_key(256, identity::ANY, DIR_EGRESS, 80, 96);
    let peer = policy_key(256, 258, DIR_EGRESS, 80, 96);
    new.policy.insert(any, value(VERDICT_DENY, 1));
    new.policy.insert(peer, value(VERDICT_ALLOW, 2));
    let (steps, _) = plan(&old, &new, 0);
    assert_eq!(
        &steps[..2],
        [
            Step::Policy(peer, Some(value(VERDICT_ALLOW, 2))),
            Step::Policy(any, Some(value(VERDICT_DENY, 1))),
        ]
    );
}

#[test]
fn the_peak_of_an_update_is_checked_against_the_capacity() {
    let old: BTreeMap<u32, ()> = (0..8).map(|k| (k, ())).collect();
    let new: BTreeMap<u32, ()> = (4..12).map(|k| (k, ())).collect();
    let peak = Peak::of(&old, &new);
    assert_eq!(
        peak,
        Peak {
            before: 8,
            after: 8,
            peak: 12
        }
    );
    assert!(peak.check("POLICY", 12).is_ok());
    let error = peak.check("POLICY", 11).expect_err("over capacity");
    assert_eq!(
        error.to_string(),
        "desired maps, POLICY: the update needs 12 entries at its peak (8 now, 8 after) and the \
         map holds at most 11; nothing was written"
    );
}

#[test]
fn the_next_boundary_is_the_first_window_edge_after_now() {
    let mut maps = DesiredMaps::default();
    assert_eq!(next_boundary(&maps, 100), u64::MAX);
    let mut expiring = value(VERDICT_ALLOW, 1);
    expiring.expires_at = 500;
    let mut starting = value(VERDICT_DENY, 2);
    starting.not_before = 300;
    let mut past = value(VERDICT_DENY, 3);
    past.not_before = 50;
    maps.policy
        .insert(policy_key(256, 258, DIR_EGRESS, 80, 96), expiring);
    maps.policy
        .insert(policy_key(256, 259, DIR_EGRESS, 80, 96), past);
    maps.defaults.insert(
        DefaultKey {
            local_identity: 256,
            direction: DIR_EGRESS,
            _pad: [0; 3],
        },
        starting,
    );
    assert_eq!(next_boundary(&maps, 100), 300);
    assert_eq!(next_boundary(&maps, 300), 500);
    assert_eq!(next_boundary(&maps, 500), u64::MAX);
    let (steps, _) = plan(&DesiredMaps::default(), &maps, 100);
    match steps.last() {
        Some(Step::Config(c)) => assert_eq!(c.valid_until, 300),
        other => panic!("the plan ends with CONFIG, not {other:?}"),
    }
}
