//! Every validation error, with its exact one-line message (file, object, field path).

use bulkhead_policy::{Inventory, PolicySet};

fn err(yaml: &str) -> String {
    PolicySet::from_yaml_str("policies/web.yaml", yaml)
        .unwrap_err()
        .to_string()
}

fn np(spec: &str) -> String {
    err(&format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: web, namespace: shop}}\nspec: {spec}\n"
    ))
}

fn sp(spec: &str) -> String {
    err(&format!(
        "apiVersion: bulkhead.dev/v1alpha1\nkind: SegmentationPolicy\nmetadata: {{name: web, namespace: shop}}\nspec: {spec}\n"
    ))
}

fn csp(spec: &str) -> String {
    err(&format!(
        "apiVersion: bulkhead.dev/v1alpha1\nkind: ClusterSegmentationPolicy\nmetadata: {{name: global}}\nspec: {spec}\n"
    ))
}

const P: &str = "policies/web.yaml: NetworkPolicy shop/web: ";
const S: &str = "policies/web.yaml: SegmentationPolicy shop/web: ";
const C: &str = "policies/web.yaml: ClusterSegmentationPolicy global: ";

#[test]
fn netpol_errors() {
    let cases = [
        (
            "{podSelector: {matchExpressions: [{key: a, operator: Has}]}}",
            "spec.podSelector.matchExpressions[0].operator: unknown operator \"Has\" (expected In, NotIn, Exists or DoesNotExist)",
        ),
        (
            "{podSelector: {matchExpressions: [{key: a, operator: Exists, values: [x]}]}}",
            "spec.podSelector.matchExpressions[0].values: operator Exists takes no values",
        ),
        (
            "{podSelector: {matchExpressions: [{key: a, operator: In}]}}",
            "spec.podSelector.matchExpressions[0].values: operator In needs at least one value",
        ),
        (
            "{podSelector: {}, ingress: [{ports: [{port: 80}, {port: 80, endPort: 79}]}]}",
            "spec.ingress[0].ports[1].endPort: 79 is below port 80",
        ),
        (
            "{podSelector: {}, ingress: [{ports: [{endPort: 79}]}]}",
            "spec.ingress[0].ports[0].endPort: 79 given without port",
        ),
        (
            "{podSelector: {}, ingress: [{ports: [{port: http, endPort: 90}]}]}",
            "spec.ingress[0].ports[0].endPort: 90 given with the named port \"http\" (ranges need a numeric port)",
        ),
        (
            "{podSelector: {}, ingress: [{ports: [{port: 70000}]}]}",
            "spec.ingress[0].ports[0].port: 70000 is not a port (1..=65535)",
        ),
        (
            "{podSelector: {}, ingress: [{ports: [{port: 0}]}]}",
            "spec.ingress[0].ports[0].port: 0 is not a port (1..=65535)",
        ),
        (
            "{podSelector: {}, ingress: [{ports: [{port: 80, endPort: 65536}]}]}",
            "spec.ingress[0].ports[0].endPort: 65536 is not a port (1..=65535)",
        ),
        (
            "{podSelector: {}, egress: [{ports: [{protocol: ICMP}]}]}",
            "spec.egress[0].ports[0].protocol: unknown protocol \"ICMP\" (expected TCP, UDP or SCTP)",
        ),
        (
            "{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]}",
            "spec.ingress[0].from[0].ipBlock.cidr: \"10.0.0.0/33\" is not a CIDR",
        ),
        (
            "{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}]}]}",
            "spec.ingress[0].from[0].ipBlock.except[0]: 11.0.0.0/16 is not inside 10.0.0.0/8",
        ),
        (
            "{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [nope]}}]}]}",
            "spec.ingress[0].from[0].ipBlock.except[0]: \"nope\" is not a CIDR",
        ),
        (
            "{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: '::ffff:10.0.0.0/104'}}]}]}",
            "spec.ingress[0].from[0].ipBlock.cidr: ::ffff:10.0.0.0/104 is an IPv4-mapped range: write it as an IPv4 CIDR",
        ),
        (
            "{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]}",
            "spec.ingress[0].from[0]: ipBlock cannot be combined with podSelector or namespaceSelector",
        ),
        (
            "{podSelector: {}, egress: [{to: [{}]}]}",
            "spec.egress[0].to[0]: empty peer (give podSelector, namespaceSelector or ipBlock)",
        ),
        (
            "{podSelector: {}, egress: [{to: [{namespaceSelector: {matchExpressions: [{key: k, operator: NotIn}]}}]}]}",
            "spec.egress[0].to[0].namespaceSelector.matchExpressions[0].values: operator NotIn needs at least one value",
        ),
        (
            "{podSelector: {}, policyTypes: [Sideways]}",
            "spec.policyTypes[0]: unknown policy type \"Sideways\" (expected Ingress or Egress)",
        ),
    ];
    for (spec, want) in cases {
        assert_eq!(np(spec), format!("{P}{want}"), "spec: {spec}");
    }
}

#[test]
fn crd_errors() {
    let cases = [
        (
            "{priority: 1001}",
            "spec.priority: 1001 is outside 0..=1000",
        ),
        (
            "{ingress: [{action: Pass}]}",
            "spec.ingress[0].action: Pass is only allowed in the Admin tier, not in a namespaced policy",
        ),
        (
            "{ingress: [{action: Allow, to: [{cidr: 10.0.0.0/8}]}]}",
            "spec.ingress[0].to: not allowed in an ingress rule (use from)",
        ),
        (
            "{egress: [{action: Allow, to: []}]}",
            "spec.egress[0].to: empty list (omit the field to match any peer)",
        ),
        (
            "{egress: [{action: Allow, to: [{cidr: 10.0.0.0/8, podSelector: {}}]}]}",
            "spec.egress[0].to[0]: cidr cannot be combined with podSelector, namespaceSelector or serviceAccount",
        ),
        (
            "{egress: [{action: Allow, to: [{except: [10.0.0.0/8]}]}]}",
            "spec.egress[0].to[0].except: given without cidr",
        ),
        (
            "{egress: [{action: Allow, to: [{}]}]}",
            "spec.egress[0].to[0]: empty peer (give podSelector, namespaceSelector, serviceAccount or cidr)",
        ),
        (
            "{egress: [{action: Allow, to: [{cidr: 10.0.0.0/8, except: [10.1.0.0/16, 9.0.0.0/8]}]}]}",
            "spec.egress[0].to[0].except[1]: 9.0.0.0/8 is not inside 10.0.0.0/8",
        ),
        (
            "{egress: [{action: Allow, to: [{serviceAccount: {name: ''}}]}]}",
            "spec.egress[0].to[0].serviceAccount.name: must not be empty",
        ),
        (
            "{ingress: [{action: Allow, notBefore: tomorrow}]}",
            "spec.ingress[0].notBefore: \"tomorrow\" is not an RFC 3339 timestamp (e.g. 2026-11-27T10:00:00Z)",
        ),
        (
            "{ingress: [{action: Allow, notBefore: '2026-11-27T18:00:00Z', expiresAt: '2026-11-27T18:00:00Z'}]}",
            "spec.ingress[0].expiresAt: 2026-11-27T18:00:00Z is not after notBefore 2026-11-27T18:00:00Z",
        ),
        (
            "{ingress: [{action: Allow, ports: [{port: 80, endPort: 79}]}]}",
            "spec.ingress[0].ports[0].endPort: 79 is below port 80",
        ),
        (
            "{subject: {podSelector: {matchExpressions: [{key: a, operator: DoesNotExist, values: [b]}]}}}",
            "spec.subject.podSelector.matchExpressions[0].values: operator DoesNotExist takes no values",
        ),
    ];
    for (spec, want) in cases {
        assert_eq!(sp(spec), format!("{S}{want}"), "spec: {spec}");
    }
    assert_eq!(
        csp("{tier: Baseline, egress: [{action: Pass}]}"),
        format!(
            "{C}spec.egress[0].action: Pass is only allowed in the Admin tier, not in the Baseline tier"
        )
    );
    assert_eq!(
        csp("{subject: {namespaceSelector: {matchExpressions: [{key: '', operator: Exists}]}}}"),
        format!("{C}spec.subject.namespaceSelector.matchExpressions[0].key: must not be empty")
    );
}

#[test]
fn document_errors() {
    assert_eq!(
        err(
            "apiVersion: bulkhead.dev/v1alpha1\nkind: SegmentationPolicy\nmetadata: {name: web}\nspec: {}\n"
        ),
        "policies/web.yaml: SegmentationPolicy web: metadata.namespace: missing (SegmentationPolicy is namespaced)"
    );
    assert_eq!(
        err(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {namespace: shop}\nspec: {}\n"
        ),
        "policies/web.yaml: NetworkPolicy shop/<unnamed>: metadata.name: missing"
    );
    assert_eq!(
        err("---\napiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: shop}\n"),
        "policies/web.yaml: Pod shop/p: kind: unsupported v1 Pod (expected networking.k8s.io/v1 NetworkPolicy, or bulkhead.dev/v1alpha1 SegmentationPolicy or ClusterSegmentationPolicy)"
    );
    assert_eq!(
        err("kind: NetworkPolicy\n"),
        "policies/web.yaml: document 0: apiVersion: missing"
    );
    assert_eq!(
        err(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: s}\nspec: {podSelector: {}}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: s}\nspec: {podSelector: {}}\n"
        ),
        "policies/web.yaml: NetworkPolicy s/a: metadata.name: duplicate object (first defined in policies/web.yaml)"
    );
    // Unknown fields of the CRDs are rejected (typos do not silently widen a policy).
    let e = sp("{ingres: []}");
    assert!(
        e.starts_with(S) && e.contains("unknown field `ingres`"),
        "{e}"
    );
    // Same name in another namespace or kind is not a duplicate.
    let ok = PolicySet::from_yaml_str(
        "ok.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: s}\nspec: {podSelector: {}}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: t}\nspec: {podSelector: {}}\n---\napiVersion: bulkhead.dev/v1alpha1\nkind: SegmentationPolicy\nmetadata: {name: a, namespace: s}\nspec: {}\n",
    )
    .unwrap();
    assert_eq!(ok.len(), 3);
}

#[test]
fn all_or_nothing_and_edits_leave_the_set_unchanged_on_error() {
    let good = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: s}\nspec: {podSelector: {}}\n";
    let bad = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: b, namespace: s}\nspec: {podSelector: {}, policyTypes: [Up]}\n";
    assert!(PolicySet::from_yaml_str("f.yaml", &format!("{good}---\n{bad}")).is_err());
    let mut set = PolicySet::from_yaml_str("f.yaml", good).unwrap();
    let obj = bulkhead_policy::load::parse_documents("g.yaml", bad)
        .unwrap()
        .remove(0);
    assert!(set.apply("g.yaml", obj).is_err());
    assert_eq!(set.len(), 1);
}

#[test]
fn directories_are_read_sorted() {
    let dir = std::env::temp_dir().join(format!("bulkhead-policy-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("b.yaml"), "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: s}\nspec: {podSelector: {}}\n").unwrap();
    std::fs::write(dir.join("a.json"), r#"{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "a", "namespace": "s"}, "spec": {}}"#).unwrap();
    std::fs::write(dir.join("notes.txt"), "not a policy").unwrap();
    let e = PolicySet::load(&dir).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "{}: NetworkPolicy s/a: metadata.name: duplicate object (first defined in {})",
            dir.join("b.yaml").display(),
            dir.join("a.json").display()
        )
    );
    std::fs::remove_file(dir.join("b.yaml")).unwrap();
    assert_eq!(PolicySet::load(&dir).unwrap().len(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn inventory_errors() {
    let inv = |y: &str| {
        Inventory::from_yaml_str("inv.yaml", y)
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        inv("namespaces: [{name: x}]\nworkloads: [{namespace: y, name: a}]\n"),
        "inv.yaml: Workload y/a: workloads[0].namespace: namespace \"y\" is not listed under namespaces"
    );
    assert_eq!(
        inv(
            "namespaces: [{name: x}]\nworkloads: [{namespace: x, name: a, ips: [10.0.0.1]}, {namespace: x, name: b, ips: [10.0.0.1]}]\n"
        ),
        "inv.yaml: Workload x/b: workloads[1].ips[0]: 10.0.0.1 already belongs to Workload x/a"
    );
    assert_eq!(
        inv(
            "namespaces: [{name: x}]\nworkloads: [{namespace: x, name: a}, {namespace: x, name: a}]\n"
        ),
        "inv.yaml: Workload x/a: workloads[1].name: duplicate workload"
    );
    assert_eq!(
        inv(
            "namespaces: [{name: x}]\nworkloads: [{namespace: x, name: a, ports: [{name: p, port: 1, protocol: ICMP}]}]\n"
        ),
        "inv.yaml: Workload x/a: workloads[0].ports[0].protocol: unknown protocol \"ICMP\" (expected TCP, UDP or SCTP)"
    );
    assert_eq!(
        inv(
            "namespaces: [{name: x}]\nworkloads: [{namespace: x, name: a, cgroup: /c}, {namespace: x, name: b, cgroup: /c}]\n"
        ),
        "inv.yaml: Workload x/b: workloads[1].cgroup: /c already belongs to Workload x/a"
    );
    assert_eq!(
        inv("namespaces: [{name: x}]\nworkloads: [{namespace: x, name: a, cgroup: sys/fs}]\n"),
        "inv.yaml: Workload x/a: workloads[0].cgroup: \"sys/fs\" is not an absolute path"
    );
    assert_eq!(
        inv("namespaces: [{name: x}, {name: x}]\n"),
        "inv.yaml: Namespace x: namespaces[1].name: duplicate namespace"
    );
    assert_eq!(
        inv("namespaces: [{name: x, labels: {kubernetes.io/metadata.name: y}}]\n"),
        "inv.yaml: Namespace x: namespaces[0].labels.kubernetes.io/metadata.name: must equal the namespace name, not \"y\""
    );
    assert_eq!(
        inv(
            "namespaces: [{name: x}]\nworkloads: [{namespace: x, name: a, ports: [{name: p, port: 1}, {name: p, port: 2}]}]\n"
        ),
        "inv.yaml: Workload x/a: workloads[0].ports[1].name: duplicate port name \"p\" for protocol TCP"
    );
    assert_eq!(
        inv(
            "namespaces: [{name: x}]\nworkloads: [{namespace: x, name: a, ips: ['::ffff:10.0.0.1']}]\n"
        ),
        "inv.yaml: Workload x/a: workloads[0].ips[0]: ::ffff:10.0.0.1 is IPv4-mapped: write it as an IPv4 address"
    );
    let e =
        inv("namespaces: [{name: x}]\nworkloads: [{namespace: x, name: a, ips: [300.0.0.1]}]\n");
    assert!(
        e.starts_with("inv.yaml: Inventory: workloads[0].ips[0]"),
        "{e}"
    );
}
