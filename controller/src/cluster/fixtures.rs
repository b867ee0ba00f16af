//! Test objects: pods, namespaces, nodes and policies as the API server sends them, and the
//! fresh compile the pipeline must agree with.

use std::collections::BTreeMap;

use bulkhead_policy::model::{
    ClusterSegmentationPolicy, Namespace as InvNamespace, SegmentationPolicy, Workload,
};
use bulkhead_policy::{
    AllocationTable, CompiledState, Compiler, Inventory, PolicyObject, PolicySet,
};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{Value, json};

pub const AT: &str = "2026-11-28T00:00:00Z";

pub fn at() -> jiff::Timestamp {
    AT.parse().unwrap()
}

/// A running pod `ns/name` on `node` with `labels` and address `ip` (None: none yet).
pub fn pod_json(ns: &str, name: &str, node: &str, labels: Value, ip: Option<&str>) -> Value {
    let mut status = json!({"phase": "Running"});
    if let Some(ip) = ip {
        status["podIP"] = json!(ip);
        status["podIPs"] = json!([{"ip": ip}]);
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{ns}-{name}"),
                     "labels": labels, "resourceVersion": "1"},
        "spec": {"nodeName": node, "serviceAccountName": "app",
                 "containers": [{"name": "c", "image": "i",
                                 "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": status,
    })
}

pub fn pod(ns: &str, name: &str, node: &str, labels: Value, ip: Option<&str>) -> Pod {
    serde_json::from_value(pod_json(ns, name, node, labels, ip)).unwrap()
}

pub fn namespace(name: &str, labels: Value) -> Namespace {
    let mut labels = labels;
    labels["kubernetes.io/metadata.name"] = json!(name);
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": labels},
    }))
    .unwrap()
}

pub fn node(name: &str) -> Node {
    serde_json::from_value(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}))
        .unwrap()
}

/// NetworkPolicy `ns/name`: pods `app=<app>` admit TCP `port` from pods `app=client`.
pub fn netpol(ns: &str, name: &str, app: &str, port: u16, generation: i64) -> NetworkPolicy {
    serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns, "generation": generation},
        "spec": {"podSelector": {"matchLabels": {"app": app}},
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                              "ports": [{"port": port}]}]},
    }))
    .unwrap()
}

/// SegmentationPolicy `ns/name` with `spec`.
pub fn segpol(ns: &str, name: &str, spec: Value, generation: i64) -> SegmentationPolicy {
    serde_json::from_value(json!({
        "apiVersion": "bulkhead.dev/v1alpha1", "kind": "SegmentationPolicy",
        "metadata": {"name": name, "namespace": ns, "generation": generation},
        "spec": spec,
    }))
    .unwrap()
}

/// ClusterSegmentationPolicy `name` with `spec`.
pub fn cluster_segpol(name: &str, spec: Value, generation: i64) -> ClusterSegmentationPolicy {
    serde_json::from_value(json!({
        "apiVersion": "bulkhead.dev/v1alpha1", "kind": "ClusterSegmentationPolicy",
        "metadata": {"name": name, "generation": generation},
        "spec": spec,
    }))
    .unwrap()
}

/// A SegmentationPolicy spec: pods `app=<app>` admit TCP `port` from anyone in the namespace.
pub fn seg_spec(app: &str, port: u16) -> Value {
    json!({"priority": 10, "subject": {"podSelector": {"matchLabels": {"app": app}}},
           "ingress": [{"action": "Allow", "from": [{"podSelector": {}}],
                        "ports": [{"protocol": "TCP", "port": port}]}]})
}

/// The fresh compile of `policies` over `namespaces` and `workloads` with `table`.
pub fn fresh(
    table: &AllocationTable,
    policies: Vec<PolicyObject>,
    namespaces: &[(&str, BTreeMap<String, String>)],
    workloads: Vec<Workload>,
) -> CompiledState {
    fresh_at(table, policies, namespaces, workloads, at())
}

/// [`fresh`] at instant `when`.
pub fn fresh_at(
    table: &AllocationTable,
    policies: Vec<PolicyObject>,
    namespaces: &[(&str, BTreeMap<String, String>)],
    workloads: Vec<Workload>,
    when: jiff::Timestamp,
) -> CompiledState {
    let set = PolicySet::from_objects(policies.into_iter().map(|o| ("api".to_owned(), o))).unwrap();
    let inventory = Inventory {
        namespaces: namespaces
            .iter()
            .map(|(n, l)| InvNamespace {
                name: (*n).to_owned(),
                labels: l.clone(),
            })
            .collect(),
        workloads,
    };
    inventory.validate("fresh").unwrap();
    Compiler::new(table.clone())
        .compile(&set, &inventory, when)
        .unwrap()
}
