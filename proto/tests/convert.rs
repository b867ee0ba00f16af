//! Wire <-> domain conversions: a compiled state survives the round trip; every bad message is
//! rejected with the message and field named; a delta that does not fit changes nothing.

use std::sync::Arc;

use bulkhead_policy::{Compiler, Inventory, MapDiff, PolicySet};
use bulkhead_proto::{Delta, NodeView, PodRef, Problem, SharedDiff, Snapshot, WireError, wire};

fn view() -> NodeView {
    let inv = Inventory::from_yaml_str(
        "inv.yaml",
        "namespaces: [{name: x}]\nworkloads: [{namespace: x, name: a, labels: {app: a}, ips: [10.0.0.1]}, {namespace: x, name: b, ips: [10.0.0.2]}]\n",
    )
    .unwrap();
    let p = PolicySet::from_yaml_str(
        "p.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np, namespace: x}\nspec: {podSelector: {matchLabels: {app: a}}, ingress: [{ports: [{port: 80}, {port: 1000, endPort: 2000}]}], egress: [{to: [{ipBlock: {cidr: 10.1.0.0/16}}]}]}\n",
    )
    .unwrap();
    let s = Compiler::default()
        .compile(&p, &inv, "2026-11-27T12:00:00Z".parse().unwrap())
        .unwrap();
    assert!(!s.policy.is_empty() && !s.defaults.is_empty() && !s.rules.is_empty());
    NodeView {
        policy: s.policy,
        defaults: s.defaults,
        addresses: s.addresses,
        workloads: s
            .workloads
            .iter()
            .map(|(r, w)| {
                let pod = PodRef {
                    namespace: r.namespace.clone(),
                    name: r.name.clone(),
                    uid: format!("uid-{}", r.name),
                };
                (pod, w.identity)
            })
            .collect(),
        rules: s.rules,
    }
}

fn snapshot() -> Snapshot {
    Snapshot {
        epoch: 7,
        revision: 3,
        view: view(),
    }
}

#[test]
fn a_compiled_view_survives_the_round_trip() {
    let s = snapshot();
    let w = wire::Snapshot::from(&s);
    assert_eq!(Snapshot::try_from(&w).unwrap(), s);
}

#[test]
fn a_bad_snapshot_names_message_field_and_problem() {
    let w = wire::Snapshot::from(&snapshot());
    type Case = (Box<dyn Fn(&mut wire::Snapshot)>, &'static str);
    let cases: Vec<Case> = vec![
        (
            Box::new(|w| w.policy[1].key.as_mut().unwrap().prefix_len = 120),
            "Snapshot.policy[1].key.prefix_len: 120 is not in 80..=96",
        ),
        (
            Box::new(|w| w.policy[0].value = None),
            "Snapshot.policy[0].value: missing",
        ),
        (
            Box::new(|w| w.policy[0].value.as_mut().unwrap().verdict = 9),
            "Snapshot.policy[0].value.verdict: 9 is not a valid value",
        ),
        (
            Box::new(|w| {
                let k = w.policy[0].key.as_mut().unwrap();
                k.prefix_len = 90;
                k.port = 0xffff;
            }),
            "Snapshot.policy[0].key.port: bits set beyond the prefix length",
        ),
        (
            Box::new(|w| w.defaults[0].key.as_mut().unwrap().direction = 0),
            "Snapshot.defaults[0].key.direction: 0 is not a valid value",
        ),
        (
            Box::new(|w| {
                w.addresses[0]
                    .prefix
                    .as_mut()
                    .unwrap()
                    .addr
                    .pop()
                    .map(drop)
                    .unwrap()
            }),
            "Snapshot.addresses[0].prefix.addr: 15 bytes, expected 16",
        ),
        (
            Box::new(|w| w.workloads[1].pod.as_mut().unwrap().uid.clear()),
            "Snapshot.workloads[1].pod.uid: empty",
        ),
        (
            Box::new(|w| w.workloads[0].identity = 2),
            "Snapshot.workloads[0].identity: 2 is not in 256..16777216",
        ),
        (
            Box::new(|w| {
                let again = w.addresses[0].clone();
                w.addresses.push(again);
            }),
            "Snapshot.addresses[3]: duplicate key",
        ),
        (
            Box::new(|w| w.revision = 0),
            "Snapshot.revision: 0 is not in 1..",
        ),
    ];
    for (mutate, expected) in cases {
        let mut bad = w.clone();
        mutate(&mut bad);
        let err = Snapshot::try_from(&bad).unwrap_err();
        assert_eq!(err.to_string(), expected);
    }
    let mut bad = w.clone();
    bad.rules[0].name.push('x');
    let err = Snapshot::try_from(&bad).unwrap_err();
    assert_eq!(err.message, "Snapshot");
    assert_eq!(err.field, "rules[0].rule_id");
    assert!(matches!(err.problem, Problem::RuleId { .. }));
}

fn delta(v: &NodeView) -> Delta {
    let (k, _) = v.policy.iter().next().unwrap();
    let (a, _) = v.addresses.iter().next().unwrap();
    Delta {
        epoch: 7,
        revision: 4,
        previous_revision: 3,
        policy: MapDiff {
            upserts: vec![],
            removals: vec![*k],
        },
        defaults: MapDiff {
            upserts: v.defaults.iter().map(|(k, v)| (*k, *v)).collect(),
            removals: vec![],
        },
        workloads: MapDiff::default(),
        shared: Arc::new(SharedDiff {
            addresses: MapDiff {
                upserts: vec![(*a, 999)],
                removals: vec![],
            },
            rules: MapDiff::default(),
        }),
    }
}

#[test]
fn a_delta_survives_the_round_trip_and_applies() {
    let mut v = view();
    let d = delta(&v);
    let back = Delta::try_from(&wire::Delta::from(&d)).unwrap();
    assert_eq!(back, d);
    let before = v.policy.len();
    v.apply(&back).unwrap();
    assert_eq!(v.policy.len(), before - 1);
    assert_eq!(v.addresses.values().next(), Some(&999));
}

#[test]
fn a_bad_delta_is_rejected_whole() {
    let v = view();
    let w = wire::Delta::from(&delta(&v));
    let mut bad = w.clone();
    bad.policy_upserts.push(wire::PolicyEntry {
        key: bad.policy_deletes[0].into(),
        value: w.defaults_upserts[0].value,
    });
    assert_eq!(
        Delta::try_from(&bad).unwrap_err().to_string(),
        "Delta.policy_deletes[0]: key both upserted and deleted"
    );
    let mut bad = w.clone();
    bad.revision = 3;
    assert_eq!(
        Delta::try_from(&bad).unwrap_err().to_string(),
        "Delta.revision: 3, expected > 3"
    );
    let mut bad = w.clone();
    bad.rule_deletes = vec![5, 5];
    assert_eq!(
        Delta::try_from(&bad).unwrap_err().to_string(),
        "Delta.rule_deletes[1]: duplicate key"
    );
    // Well formed, but it deletes what the receiver does not hold: nothing is applied.
    let mut held = v.clone();
    let (k, _) = held.policy.pop_first().unwrap();
    let mut d = delta(&v);
    d.policy.removals = vec![k];
    let snapshot = held.clone();
    let err: WireError = held.apply(&d).unwrap_err();
    assert_eq!(
        err.to_string(),
        "Delta.policy_deletes[0]: deletes a key that is not held"
    );
    assert_eq!(held, snapshot);
}
