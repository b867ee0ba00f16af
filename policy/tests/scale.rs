//! Scale: 10,000 workloads in 1,000 namespaces under 2,000 policies of all kinds. Run in release:
//! `cargo test --release -p bulkhead-policy --test scale -- --ignored --nocapture`.
//! The time bounds are asserted only in release builds.

use std::collections::BTreeMap;
use std::time::Instant;

use bulkhead_policy::model::{NamedPort, Namespace, Workload};
use bulkhead_policy::{
    AllocationTable, Compiler, Incremental, Inventory, PolicySet, StateDiff, WorkloadRef, load,
};
use serde_json::json;

fn inventory() -> Inventory {
    let mut inv = Inventory::default();
    for n in 0..1000 {
        let labels = BTreeMap::from([
            ("team".to_string(), format!("t{}", n % 20)),
            (
                "env".to_string(),
                if n % 3 == 0 { "prod" } else { "dev" }.to_string(),
            ),
        ]);
        inv.namespaces.push(Namespace {
            name: format!("ns-{n}"),
            labels,
        });
        for w in 0..10 {
            let labels = BTreeMap::from([
                ("app".to_string(), format!("app-{}", w % 5)),
                ("version".to_string(), format!("v{}", w / 5)),
            ]);
            inv.workloads.push(Workload {
                namespace: format!("ns-{n}"),
                name: format!("w-{w}"),
                labels,
                service_account: if w % 2 == 0 {
                    "default".into()
                } else {
                    "robot".into()
                },
                ips: vec![
                    format!("10.{}.{}.{}", n / 256, n % 256, w + 1)
                        .parse()
                        .unwrap(),
                ],
                ports: vec![NamedPort {
                    name: "http".into(),
                    port: 8080,
                    protocol: "TCP".into(),
                }],
                cgroup: Some(format!("/sys/fs/cgroup/ns-{n}/w-{w}")),
            });
        }
    }
    inv
}

fn policies() -> String {
    let mut docs = Vec::new();
    for n in 0..1000 {
        // Namespace isolation with same-namespace and one-neighbour-namespace peers.
        docs.push(json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "web", "namespace": format!("ns-{n}")},
            "spec": {"podSelector": {"matchLabels": {"app": format!("app-{}", n % 5)}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "app-0"}}},
                                      {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": format!("ns-{}", (n + 1) % 1000)}}}],
                             "ports": [{"port": "http"}, {"port": 9000, "endPort": 9100}]}]}}));
        docs.push(json!({"apiVersion": "bulkhead.dev/v1alpha1", "kind": "SegmentationPolicy",
            "metadata": {"name": "egress", "namespace": format!("ns-{n}")},
            "spec": {"priority": 100, "subject": {"podSelector": {"matchExpressions": [{"key": "version", "operator": "In", "values": ["v1"]}]}},
                "egress": [{"action": "Deny", "to": [{"cidr": "169.254.0.0/16"}]},
                           {"action": "Allow", "to": [{"podSelector": {}}], "ports": [{"protocol": "TCP", "port": 8080}]},
                           {"action": "Allow", "to": [{"cidr": format!("192.0.{}.0/24", n % 256)}],
                            "expiresAt": "2030-01-01T00:00:00Z"}]}}));
    }
    docs.push(json!({"apiVersion": "bulkhead.dev/v1alpha1", "kind": "ClusterSegmentationPolicy",
        "metadata": {"name": "metadata"},
        "spec": {"priority": 1, "egress": [{"action": "Deny", "to": [{"cidr": "169.254.169.254/32"}]}]}}));
    docs.push(json!({"apiVersion": "bulkhead.dev/v1alpha1", "kind": "ClusterSegmentationPolicy",
        "metadata": {"name": "prod-pass"},
        "spec": {"priority": 2, "subject": {"namespaceSelector": {"matchLabels": {"env": "prod", "team": "t1"}}},
                 "ingress": [{"action": "Pass", "from": [{"namespaceSelector": {"matchLabels": {"env": "prod"}}}]},
                             {"action": "Deny", "from": [{"namespaceSelector": {"matchLabels": {"env": "dev", "team": "t2"}}}], "ports": [{"port": 22}]}]}}));
    docs.iter()
        .map(|d| serde_json::to_string(d).unwrap())
        .collect::<Vec<_>>()
        .join("\n---\n")
}

#[test]
#[ignore = "scale benchmark: run in release with --ignored"]
fn ten_thousand_workloads() {
    let inv = inventory();
    let text = policies();
    let objects = load::parse_documents("scale.yaml", &text).unwrap();
    let set = PolicySet::from_objects(objects.into_iter().map(|o| ("scale.yaml".to_string(), o)))
        .unwrap();
    assert_eq!(
        (inv.workloads.len(), inv.namespaces.len(), set.len()),
        (10_000, 1_000, 2_002)
    );
    let at = "2026-11-27T12:00:00Z".parse().unwrap();
    let mut compiler = Compiler::new(AllocationTable::new());
    let t = Instant::now();
    let state = compiler.compile(&set, &inv, at).unwrap();
    let full = t.elapsed();
    eprintln!(
        "full compile: {full:?}: {} policy entries, {} defaults, {} addresses, {} identities",
        state.policy.len(),
        state.defaults.len(),
        state.addresses.len(),
        state.identities.len()
    );
    // One pod relabel.
    let mut inv2 = inv.clone();
    inv2.set_workload_labels(
        &WorkloadRef::new("ns-7", "w-3"),
        BTreeMap::from([("app".to_string(), "app-0".to_string())]),
    );
    let t = Instant::now();
    let relabeled = compiler.compile(&set, &inv2, at).unwrap();
    let relabel = t.elapsed();
    // One policy edit.
    let mut set2 = set.clone();
    let edit = load::parse_documents(
        "edit.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: ns-9}\nspec: {podSelector: {}, ingress: [{ports: [{port: 443}]}]}\n",
    )
    .unwrap();
    set2.apply("edit.yaml", edit.into_iter().next().unwrap())
        .unwrap();
    let t = Instant::now();
    let edited = compiler.compile(&set2, &inv, at).unwrap();
    let policy_edit = t.elapsed();
    eprintln!("relabel recompile: {relabel:?}, policy edit recompile: {policy_edit:?}");
    assert_ne!(relabeled.policy, state.policy);
    assert_ne!(edited.policy, state.policy);
    incremental(&set, &inv, at, full);
    // Target: well under 1 s on an idle machine (about 0.3 s measured); the bound leaves room
    // for the shared, loaded CI machine.
    if !cfg!(debug_assertions) {
        assert!(full.as_millis() < 1500, "full compile took {full:?}");
    }
}

/// Entries a diff touches: (policy, defaults, addresses, workloads), upserts + removals.
fn touched(d: &StateDiff) -> [usize; 4] {
    [
        d.policy.upserts.len() + d.policy.removals.len(),
        d.defaults.upserts.len() + d.defaults.removals.len(),
        d.addresses.upserts.len() + d.addresses.removals.len(),
        d.workloads.upserts.len() + d.workloads.removals.len(),
    ]
}

/// Times `REPS` changes of one kind (after `WARM` unmeasured ones), alternating between two
/// versions so every change is real; prints median and min, the entries the diffs touched, and
/// checks that no change took the full-compile fallback.
fn measure(
    name: &str,
    inc: &mut Incremental,
    mut change: impl FnMut(&mut Incremental, bool) -> StateDiff,
) -> std::time::Duration {
    const WARM: usize = 4;
    const REPS: usize = 20;
    let fulls = inc.full_compiles();
    let mut times = Vec::new();
    let mut entries = Vec::new();
    for i in 0..WARM + REPS {
        let t = Instant::now();
        let d = change(inc, i % 2 == 0);
        let e = t.elapsed();
        assert!(!d.is_empty(), "{name}: the change changed nothing");
        if i >= WARM {
            times.push(e);
            entries.push(touched(&d));
        }
    }
    assert_eq!(
        inc.full_compiles(),
        fulls,
        "{name}: took the full-compile fallback"
    );
    times.sort();
    entries.sort();
    let median = times[times.len() / 2];
    eprintln!(
        "incremental {name}: median {median:?}, min {:?}, max {:?}; entries touched \
         (policy, defaults, addresses, workloads) {:?} .. {:?}",
        times[0],
        times[times.len() - 1],
        entries[0],
        entries[entries.len() - 1]
    );
    median
}

/// The incremental API on the same inputs: one pod relabelled (to a new identity and onto an
/// existing one), one policy edited, one pod added and removed; the held state equals a fresh
/// compile afterwards.
fn incremental(set: &PolicySet, inv: &Inventory, at: jiff::Timestamp, full: std::time::Duration) {
    let t = Instant::now();
    let mut inc = Incremental::new(Compiler::default(), set.clone(), inv.clone(), at).unwrap();
    eprintln!("incremental: initial full compile {:?}", t.elapsed());
    let pod = WorkloadRef::new("ns-7", "w-3");
    let original = inv.workload(&pod).unwrap().labels.clone();
    let relabel = measure("pod relabel (new identity)", &mut inc, |inc, there| {
        let labels = if there {
            BTreeMap::from([("app".to_string(), "app-0".to_string())])
        } else {
            original.clone()
        };
        inc.set_workload_labels(&pod, labels).unwrap()
    });
    // w-1 has the same service account and ports: w-3 takes w-1's identity.
    let w1 = inv
        .workload(&WorkloadRef::new("ns-7", "w-1"))
        .unwrap()
        .labels
        .clone();
    measure("pod relabel (existing identity)", &mut inc, |inc, there| {
        let labels = if there { w1.clone() } else { original.clone() };
        inc.set_workload_labels(&pod, labels).unwrap()
    });
    // ns-3 is a prod namespace: the cluster policy prod-pass's peer list
    // `namespaceSelector: {env: prod}` selects the new identity, so all of prod-pass's subjects
    // (the identities of the prod namespaces of team t1) are resolved again.
    let prod_pod = WorkloadRef::new("ns-3", "w-3");
    let prod_original = inv.workload(&prod_pod).unwrap().labels.clone();
    measure(
        "pod relabel (new identity, selected by a cluster peer list)",
        &mut inc,
        |inc, there| {
            let labels = if there {
                BTreeMap::from([("app".to_string(), "app-0".to_string())])
            } else {
                prod_original.clone()
            };
            inc.set_workload_labels(&prod_pod, labels).unwrap()
        },
    );
    let edit = load::parse_documents(
        "edit.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: ns-9}\nspec: {podSelector: {}, ingress: [{ports: [{port: 443}]}]}\n",
    )
    .unwrap()
    .remove(0);
    let key = edit.key();
    let before = set.get(&key).unwrap().clone();
    let policy = measure("policy edit", &mut inc, |inc, there| {
        let o = if there { edit.clone() } else { before.clone() };
        inc.apply_policy("edit.yaml", o).unwrap()
    });
    let mut new_pod = inv.workload(&pod).unwrap().clone();
    new_pod.name = "w-new".into();
    new_pod.ips = vec!["10.250.0.1".parse().unwrap()];
    new_pod.cgroup = None;
    new_pod.labels.insert("fresh".into(), "yes".into());
    measure("pod added / removed", &mut inc, |inc, add| {
        if add {
            inc.upsert_workload("pods", new_pod.clone()).unwrap()
        } else {
            inc.remove_workload(&new_pod.reference()).unwrap()
        }
    });
    // A cluster policy whose subject is every workload (10,000 identities), with a workload
    // peer (ns-0's app-4 pods): applying or removing it resolves every identity's egress again,
    // and a pod relabelled into its peer set adds an entry to every identity.
    let dns = load::parse_documents(
        "dns.yaml",
        "apiVersion: bulkhead.dev/v1alpha1\nkind: ClusterSegmentationPolicy\nmetadata: {name: allow-dns}\n\
         spec: {priority: 20, subject: {namespaceSelector: {}}, egress: [{action: Allow, \
         to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: ns-0}}, \
         podSelector: {matchLabels: {app: app-4}}}], ports: [{protocol: UDP, port: 53}]}]}\n",
    )
    .unwrap()
    .remove(0);
    let dns_key = dns.key();
    measure(
        "cluster policy over every workload applied / removed",
        &mut inc,
        |inc, add| {
            if add {
                inc.apply_policy("dns.yaml", dns.clone()).unwrap()
            } else {
                inc.remove_policy(&dns_key).unwrap()
            }
        },
    );
    inc.apply_policy("dns.yaml", dns.clone()).unwrap();
    let dns_pod = WorkloadRef::new("ns-0", "w-3");
    let dns_original = inv.workload(&dns_pod).unwrap().labels.clone();
    measure(
        "pod relabel into the peer set of that cluster policy (new identity)",
        &mut inc,
        |inc, there| {
            let labels = if there {
                BTreeMap::from([("app".to_string(), "app-4".to_string())])
            } else {
                dns_original.clone()
            };
            inc.set_workload_labels(&dns_pod, labels).unwrap()
        },
    );
    let fresh = Compiler::new(inc.table().clone())
        .compile(inc.policies(), inc.inventory(), at)
        .unwrap();
    assert!(
        fresh == *inc.state(),
        "incremental state differs from a fresh compile"
    );
    eprintln!(
        "full compile {full:?} vs incremental median: relabel {relabel:?}, policy edit {policy:?}"
    );
    if !cfg!(debug_assertions) {
        // The goal is 10 ms (met on an idle machine); the bound leaves room for a loaded one.
        assert!(relabel.as_millis() < 100 && policy.as_millis() < 100);
    }
}
