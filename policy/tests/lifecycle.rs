//! Lifecycle tests: replace-by-name and delete, relabels, identity stability and determinism
//! across recompiles and restarts (each decision checked on both evaluators).

mod common;

use bulkhead_policy::{AllocationTable, Compiler, Kind, ObjectKey, Protocol, Reason, Verdict};
use common::*;

#[test]
fn update_by_name_replaces_and_delete_removes() {
    let mut set = policies(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np, namespace: x}
spec: {podSelector: {}, ingress: [{ports: [{port: 80}]}]}
"#,
    );
    let replacement = bulkhead_policy::load::parse_documents(
        "edit.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np, namespace: x}\nspec: {podSelector: {}, ingress: [{ports: [{port: 81}]}]}\n",
    )
    .unwrap();
    set.apply("edit.yaml", replacement.into_iter().next().unwrap())
        .unwrap();
    assert_eq!(set.len(), 1);
    assert_eq!(
        decide(&set, wl("y", "c"), wl("x", "a"), Protocol::Tcp, 80).verdict,
        Verdict::Deny
    );
    assert_eq!(
        decide(&set, wl("y", "c"), wl("x", "a"), Protocol::Tcp, 81).verdict,
        Verdict::Allow
    );
    let key = ObjectKey {
        kind: Kind::NetworkPolicy,
        namespace: Some("x".into()),
        name: "np".into(),
    };
    assert!(set.remove(&key).is_some());
    assert_eq!(
        decide(&set, wl("y", "c"), wl("x", "a"), Protocol::Tcp, 80)
            .ingress
            .reason,
        Reason::NotIsolated
    );
}

#[test]
fn relabel_changes_selection() {
    let set = policies(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: blue}}}]}]
"#,
    );
    let mut inv = inventory();
    let noon = t(NOON);
    let d = decide_at(
        &set,
        &inv,
        wl("y", "c"),
        wl("x", "a"),
        Protocol::Tcp,
        80,
        noon,
        noon,
    );
    assert_eq!(d.verdict, Verdict::Deny);
    assert!(inv.set_namespace_labels("y", [("team".to_string(), "blue".to_string())].into()));
    let d = decide_at(
        &set,
        &inv,
        wl("y", "c"),
        wl("x", "a"),
        Protocol::Tcp,
        80,
        noon,
        noon,
    );
    assert_eq!(d.verdict, Verdict::Allow);
    assert!(inv.set_workload_labels(
        &bulkhead_policy::WorkloadRef::new("x", "a"),
        Default::default()
    ));
    let d = decide_at(
        &set,
        &inv,
        wl("x", "b"),
        wl("x", "a"),
        Protocol::Tcp,
        80,
        noon,
        noon,
    );
    assert_eq!(d.ingress.reason, Reason::NotIsolated);
}

#[test]
fn identities_are_stable_and_deterministic() {
    let set = policies(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}}]}]
"#,
    );
    let inv = inventory();
    let mut c1 = Compiler::new(AllocationTable::new());
    let s1 = c1.compile(&set, &inv, t(NOON)).unwrap();
    let mut c2 = Compiler::new(AllocationTable::new());
    let s2 = c2.compile(&set, &inv, t(NOON)).unwrap();
    assert_eq!(s1, s2, "same inputs, same output");
    assert_eq!(c1.table(), c2.table());
    // Relabel x/b: its new label set gets a new number; everyone else keeps theirs.
    let mut inv2 = inv.clone();
    inv2.set_workload_labels(
        &bulkhead_policy::WorkloadRef::new("x", "b"),
        [("pod".to_string(), "zz".to_string())].into(),
    );
    let s3 = c1.compile(&set, &inv2, t(NOON)).unwrap();
    for w in ["a", "c"] {
        let ns = if w == "a" { "x" } else { "y" };
        let r = bulkhead_policy::WorkloadRef::new(ns, w);
        assert_eq!(s1.workloads[&r].identity, s3.workloads[&r].identity);
    }
    let r = bulkhead_policy::WorkloadRef::new("x", "b");
    assert_ne!(s1.workloads[&r].identity, s3.workloads[&r].identity);
    // A compiler restarted from the persisted table numbers as its predecessor did.
    let json = serde_json::to_string(c1.table()).unwrap();
    let mut c4 = Compiler::new(serde_json::from_str(&json).unwrap());
    let s4 = c4.compile(&set, &inv2, t(NOON)).unwrap();
    assert_eq!(s3, s4);
    // Rule ids are stable too, and name their rule.
    for (id, r) in &s1.rules {
        assert_eq!(*id, r.id());
        assert_ne!(*id, 0);
    }
}

#[test]
fn rule_id_collisions_fail_loudly() {
    // FNV-1a("NetworkPolicy/x/p3516/ingress/-") == FNV-1a("NetworkPolicy/x/p157771/ingress/0").
    let set = policies(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p3516, namespace: x}
spec: {podSelector: {}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p157771, namespace: x}
spec: {podSelector: {}, ingress: [{}]}
"#,
    );
    let err = Compiler::new(AllocationTable::new())
        .compile(&set, &inventory(), t(NOON))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "rule id collision: NetworkPolicy x/p157771 ingress[0] and NetworkPolicy x/p3516 ingress (isolation) both hash to 0xfb1f76f0; rename one of them"
    );
}
