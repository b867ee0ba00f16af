//! Pure tests of the translation: watch events -> pipeline -> compiler, checked against fresh
//! compiles of the same objects; realization tracking against a hub.

use std::collections::{BTreeMap, BTreeSet};

use bulkhead_policy::model::Workload;
use bulkhead_policy::{AllocationTable, Kind, ObjectKey, PolicyObject, WorkloadRef};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::runtime::watcher::Event;
use serde_json::json;

use super::convert::{self, PodEntry};
use super::fixtures::*;
use super::pipeline::{Change, Pipeline};
use super::progress::Tracker;
use super::watch::{Lists, Object};
use crate::sync::SyncHub;

fn list<K: Object>(lists: &mut Lists, p: &mut Pipeline, objects: Vec<K>) {
    lists.take(Event::<K>::Init, p);
    for o in objects {
        lists.take(Event::InitApply(o), p);
    }
    lists.take(Event::<K>::InitDone, p);
}

fn labels(v: serde_json::Value) -> BTreeMap<String, String> {
    serde_json::from_value(v).unwrap()
}

fn workload(ns: &str, name: &str, app: &str, ip: Option<&str>) -> Workload {
    convert::pod(&pod(ns, name, "n1", json!({"app": app}), ip))
        .unwrap()
        .workload
}

/// Shop: namespace `shop` (team=shop), web (n1) and client (n2) pods, a NetworkPolicy and a
/// SegmentationPolicy; namespace `db` with one pod on n2.
fn shop(p: &mut Pipeline) -> Lists {
    let mut lists = Lists::default();
    list(
        &mut lists,
        p,
        vec![
            namespace("shop", json!({"team": "shop"})),
            namespace("db", json!({})),
        ],
    );
    list(&mut lists, p, vec![node("n1"), node("n2"), node("n3")]);
    list(
        &mut lists,
        p,
        vec![
            pod("shop", "web", "n1", json!({"app": "web"}), Some("10.0.0.1")),
            pod(
                "shop",
                "client",
                "n2",
                json!({"app": "client"}),
                Some("10.0.0.2"),
            ),
            pod("db", "pg", "n2", json!({"app": "pg"}), Some("10.0.1.1")),
        ],
    );
    list(&mut lists, p, vec![netpol("shop", "web", "web", 8080, 1)]);
    list(
        &mut lists,
        p,
        vec![segpol("db", "pg", seg_spec("pg", 5432), 1)],
    );
    list::<bulkhead_policy::model::ClusterSegmentationPolicy>(&mut lists, p, vec![]);
    lists
}

fn shop_namespaces() -> Vec<(&'static str, BTreeMap<String, String>)> {
    vec![
        ("db", BTreeMap::new()),
        ("shop", labels(json!({"team": "shop"}))),
    ]
}

fn shop_policies() -> Vec<PolicyObject> {
    vec![
        convert::network_policy(&netpol("shop", "web", "web", 8080, 1)).object,
        convert::segmentation_policy(&segpol("db", "pg", seg_spec("pg", 5432), 1)).object,
    ]
}

fn shop_workloads() -> Vec<Workload> {
    vec![
        workload("shop", "web", "web", Some("10.0.0.1")),
        workload("shop", "client", "client", Some("10.0.0.2")),
        workload("db", "pg", "pg", Some("10.0.1.1")),
    ]
}

/// Shop's client pod relabelled `app=web`.
fn client_as_web() -> k8s_openapi::api::core::v1::Pod {
    pod(
        "shop",
        "client",
        "n2",
        json!({"app": "web"}),
        Some("10.0.0.2"),
    )
}

fn table(p: &Pipeline) -> AllocationTable {
    p.table().unwrap().clone()
}

#[test]
fn nothing_compiles_before_every_kind_listed() {
    let mut p = Pipeline::new(AllocationTable::new());
    let mut lists = Lists::default();
    list(&mut lists, &mut p, vec![namespace("shop", json!({}))]);
    assert!(!lists.synced());
    let lists = shop(&mut p);
    assert!(lists.synced());
}

#[test]
fn initial_lists_are_one_full_compile_equal_to_a_fresh_one() {
    let mut p = Pipeline::new(AllocationTable::new());
    shop(&mut p);
    let f = p.flush(at()).unwrap();
    assert!(f.changed);
    assert_eq!((f.full_compiles, f.compiler_calls, f.refused), (1, 1, 0));
    assert_eq!(f.policies.len(), 2);
    let want = fresh(
        &table(&p),
        shop_policies(),
        &shop_namespaces(),
        shop_workloads(),
    );
    assert_eq!(p.state().unwrap(), &want);
    assert!(!want.policy.is_empty());
    // Every node is listed, pods by UID.
    let a = p.assignment();
    assert_eq!(a.keys().collect::<Vec<_>>(), ["n1", "n2", "n3"]);
    assert_eq!(a["n1"][&WorkloadRef::new("shop", "web")], "uid-shop-web");
    assert!(a["n3"].is_empty());
    // Nothing left to do.
    assert!(!p.dirty());
}

#[test]
fn a_pod_event_recompiles_only_that_pod() {
    let mut p = Pipeline::new(AllocationTable::new());
    let mut lists = shop(&mut p);
    p.flush(at()).unwrap();
    // Relabel: one compiler call, no full compile.
    lists.take(Event::Apply(client_as_web()), &mut p);
    let f = p.flush(at()).unwrap();
    assert_eq!((f.compiler_calls, f.full_compiles), (1, 0));
    assert!(f.changed);
    let mut ws = shop_workloads();
    ws[1] = workload("shop", "client", "web", Some("10.0.0.2"));
    let want = fresh(&table(&p), shop_policies(), &shop_namespaces(), ws.clone());
    assert_eq!(p.state().unwrap(), &want);
    // A status-only update (same workload) compiles nothing.
    let mut same = pod(
        "shop",
        "client",
        "n2",
        json!({"app": "web"}),
        Some("10.0.0.2"),
    );
    same.metadata.resource_version = Some("7".into());
    lists.take(Event::Apply(same), &mut p);
    let f = p.flush(at()).unwrap();
    assert_eq!((f.compiler_calls, f.changed), (0, false));
    // Deletion; then a pod that finished is no workload.
    lists.take(
        Event::Delete(pod("shop", "client", "n2", json!({}), None)),
        &mut p,
    );
    let mut done = pod("db", "pg", "n2", json!({"app": "pg"}), Some("10.0.1.1"));
    done.status.as_mut().unwrap().phase = Some("Succeeded".into());
    lists.take(Event::Apply(done), &mut p);
    let f = p.flush(at()).unwrap();
    assert_eq!((f.compiler_calls, f.full_compiles), (2, 0));
    ws.truncate(1);
    let want = fresh(&table(&p), shop_policies(), &shop_namespaces(), ws);
    assert_eq!(p.state().unwrap(), &want);
    assert!(p.assignment()["n2"].is_empty());
}

#[test]
fn policy_edits_and_removals_follow_generations() {
    let mut p = Pipeline::new(AllocationTable::new());
    let mut lists = shop(&mut p);
    p.flush(at()).unwrap();
    lists.take(Event::Apply(netpol("shop", "web", "web", 9090, 2)), &mut p);
    let f = p.flush(at()).unwrap();
    let key = ObjectKey {
        kind: Kind::NetworkPolicy,
        namespace: Some("shop".into()),
        name: "web".into(),
    };
    assert_eq!(f.policies, BTreeMap::from([(key.clone(), Some(2))]));
    assert_eq!((f.compiler_calls, f.full_compiles), (1, 0));
    let mut policies = shop_policies();
    policies[0] = convert::network_policy(&netpol("shop", "web", "web", 9090, 2)).object;
    let want = fresh(
        &table(&p),
        policies.clone(),
        &shop_namespaces(),
        shop_workloads(),
    );
    assert_eq!(p.state().unwrap(), &want);
    lists.take(Event::Delete(netpol("shop", "web", "web", 9090, 2)), &mut p);
    let f = p.flush(at()).unwrap();
    assert_eq!(f.policies, BTreeMap::from([(key, None)]));
    let want = fresh(
        &table(&p),
        policies[1..].to_vec(),
        &shop_namespaces(),
        shop_workloads(),
    );
    assert_eq!(p.state().unwrap(), &want);
}

#[test]
fn an_invalid_policy_keeps_its_error_and_the_last_good_version() {
    let mut p = Pipeline::new(AllocationTable::new());
    let mut lists = shop(&mut p);
    p.flush(at()).unwrap();
    let before = p.state().unwrap().clone();
    let mut bad = seg_spec("pg", 5432);
    bad["ingress"][0]["expiresAt"] = json!("not a time");
    lists.take(Event::Apply(segpol("db", "pg", bad, 2)), &mut p);
    let f = p.flush(at()).unwrap();
    assert_eq!((f.refused, f.changed), (1, false));
    assert!(f.policies.is_empty());
    assert_eq!(p.state().unwrap(), &before);
    let key = ObjectKey {
        kind: Kind::SegmentationPolicy,
        namespace: Some("db".into()),
        name: "pg".into(),
    };
    let record = &p.policies()[&key];
    let err = record.valid.clone().unwrap_err();
    assert!(
        err.contains("SegmentationPolicy db/pg") && err.contains("expiresAt"),
        "{err}"
    );
    assert_eq!(record.input.generation, 2);
    assert_eq!(record.applied.as_ref().map(|a| a.generation), Some(1));
    // A brand-new invalid object is never applied; the initial compile refuses it alone.
    let mut p = Pipeline::new(AllocationTable::new());
    let mut lists = Lists::default();
    let mut bad = seg_spec("pg", 5432);
    bad["ingress"][0]["ports"][0]["protocol"] = json!("ICMP");
    list(&mut lists, &mut p, vec![namespace("db", json!({}))]);
    list(
        &mut lists,
        &mut p,
        Vec::<k8s_openapi::api::core::v1::Node>::new(),
    );
    list(
        &mut lists,
        &mut p,
        Vec::<k8s_openapi::api::core::v1::Pod>::new(),
    );
    list(
        &mut lists,
        &mut p,
        Vec::<k8s_openapi::api::networking::v1::NetworkPolicy>::new(),
    );
    list(&mut lists, &mut p, vec![segpol("db", "pg", bad, 1)]);
    list::<bulkhead_policy::model::ClusterSegmentationPolicy>(&mut lists, &mut p, vec![]);
    let f = p.flush(at()).unwrap();
    assert_eq!(f.refused, 1);
    assert!(p.policies()[&key].valid.is_err());
    assert!(p.policies()[&key].applied.is_none());
}

/// `kubectl replace --force` with a bad spec: the valid object is deleted and re-created invalid
/// before the next flush. The compiler keeps the deleted object's version (the last good state
/// keeps enforcing), and deleting the invalid object later removes that version.
#[test]
fn a_policy_recreated_invalid_keeps_the_last_good_version_until_deleted() {
    let mut p = Pipeline::new(AllocationTable::new());
    let mut lists = shop(&mut p);
    p.flush(at()).unwrap();
    let before = p.state().unwrap().clone();
    let key = ObjectKey {
        kind: Kind::SegmentationPolicy,
        namespace: Some("db".into()),
        name: "pg".into(),
    };
    lists.take(
        Event::Delete(segpol("db", "pg", seg_spec("pg", 5432), 1)),
        &mut p,
    );
    let mut bad = seg_spec("pg", 5432);
    bad["ingress"][0]["expiresAt"] = json!("not a time");
    lists.take(Event::Apply(segpol("db", "pg", bad.clone(), 1)), &mut p);
    let f = p.flush(at()).unwrap();
    assert_eq!((f.refused, f.changed), (1, false));
    assert!(f.policies.is_empty());
    assert_eq!(p.state().unwrap(), &before);
    let record = &p.policies()[&key];
    assert!(record.valid.is_err());
    assert_eq!(record.applied.as_ref().map(|a| a.generation), Some(1));
    lists.take(Event::Delete(segpol("db", "pg", bad, 1)), &mut p);
    let f = p.flush(at()).unwrap();
    assert_eq!(f.policies, BTreeMap::from([(key.clone(), None)]));
    assert!(!p.policies().contains_key(&key));
    let want = fresh(
        &table(&p),
        shop_policies()[..1].to_vec(),
        &shop_namespaces(),
        shop_workloads(),
    );
    assert_eq!(
        p.state().unwrap(),
        &want,
        "the deleted policy is still compiled"
    );
}

#[test]
fn pods_wait_for_their_namespace_and_namespaces_cost_one_full_compile() {
    let mut p = Pipeline::new(AllocationTable::new());
    let mut lists = shop(&mut p);
    p.flush(at()).unwrap();
    lists.take(
        Event::Apply(pod("new", "a", "n3", json!({"app": "a"}), Some("10.0.2.1"))),
        &mut p,
    );
    let f = p.flush(at()).unwrap();
    assert_eq!((f.compiler_calls, f.changed), (0, false));
    assert!(
        !p.state()
            .unwrap()
            .workloads
            .contains_key(&WorkloadRef::new("new", "a"))
    );
    lists.take(Event::Apply(namespace("new", json!({"x": "1"}))), &mut p);
    lists.take(
        Event::Apply(namespace("shop", json!({"team": "web"}))),
        &mut p,
    );
    let f = p.flush(at()).unwrap();
    // One rebuild for the new namespace, one for the relabel; one call for the waiting pod.
    assert_eq!((f.full_compiles, f.compiler_calls), (2, 3));
    let mut namespaces = shop_namespaces();
    namespaces[1].1 = labels(json!({"team": "web"}));
    namespaces.push(("new", labels(json!({"x": "1"}))));
    let mut ws = shop_workloads();
    ws.push(workload("new", "a", "a", Some("10.0.2.1")));
    let want = fresh(&table(&p), shop_policies(), &namespaces, ws.clone());
    assert_eq!(p.state().unwrap(), &want);
    // The namespace goes: its pods are withdrawn even before their own deletions arrive.
    lists.take(Event::Delete(namespace("new", json!({}))), &mut p);
    p.flush(at()).unwrap();
    assert!(
        !p.state()
            .unwrap()
            .workloads
            .contains_key(&WorkloadRef::new("new", "a"))
    );
    ws.pop();
    let want = fresh(&table(&p), shop_policies(), &namespaces, ws);
    assert_eq!(p.state().unwrap(), &want);
}

#[test]
fn a_relist_removes_what_the_new_list_lacks() {
    let mut p = Pipeline::new(AllocationTable::new());
    let mut lists = shop(&mut p);
    p.flush(at()).unwrap();
    list(
        &mut lists,
        &mut p,
        vec![pod(
            "shop",
            "web",
            "n1",
            json!({"app": "web"}),
            Some("10.0.0.1"),
        )],
    );
    list(&mut lists, &mut p, vec![node("n1"), node("n2")]);
    list::<k8s_openapi::api::networking::v1::NetworkPolicy>(&mut lists, &mut p, vec![]);
    p.flush(at()).unwrap();
    let want = fresh(
        &table(&p),
        shop_policies()[1..].to_vec(),
        &shop_namespaces(),
        shop_workloads()[..1].to_vec(),
    );
    assert_eq!(p.state().unwrap(), &want);
    assert_eq!(p.assignment().keys().collect::<Vec<_>>(), ["n1", "n2"]);
}

#[test]
fn an_address_claimed_twice_belongs_to_its_first_holder() {
    let mut p = Pipeline::new(AllocationTable::new());
    let mut lists = shop(&mut p);
    p.flush(at()).unwrap();
    // A new pod reuses web's address before web's deletion is seen.
    lists.take(
        Event::Apply(pod(
            "shop",
            "web2",
            "n3",
            json!({"app": "web"}),
            Some("10.0.0.1"),
        )),
        &mut p,
    );
    p.flush(at()).unwrap();
    let state = p.state().unwrap();
    assert!(
        state.workloads[&WorkloadRef::new("shop", "web2")]
            .ips
            .is_empty()
    );
    assert_eq!(
        state.workloads[&WorkloadRef::new("shop", "web")].ips.len(),
        1
    );
    lists.take(
        Event::Delete(pod("shop", "web", "n1", json!({}), None)),
        &mut p,
    );
    p.flush(at()).unwrap();
    let mut ws = shop_workloads();
    ws[0] = workload("shop", "web2", "web", Some("10.0.0.1"));
    let want = fresh(&table(&p), shop_policies(), &shop_namespaces(), ws);
    assert_eq!(p.state().unwrap(), &want);
    assert_eq!(
        p.assignment()["n3"][&WorkloadRef::new("shop", "web2")],
        "uid-shop-web2"
    );
}

#[test]
fn which_pods_are_workloads() {
    let base = pod("shop", "web", "n1", json!({"app": "web"}), Some("10.0.0.1"));
    let entry: PodEntry = convert::pod(&base).unwrap();
    assert_eq!(entry.node, "n1");
    assert_eq!(entry.workload.service_account, "app");
    assert_eq!(entry.workload.ports[0].name, "http");
    // Scheduled without an address yet: a workload without addresses.
    let no_ip = pod("shop", "web", "n1", json!({}), None);
    assert!(convert::pod(&no_ip).unwrap().workload.ips.is_empty());
    // Unscheduled: no workload, and the event withdraws it.
    let mut pending = base.clone();
    pending.spec.as_mut().unwrap().node_name = None;
    assert!(convert::pod(&pending).is_none());
    assert_eq!(
        pending.change(),
        Some(Change::PodGone(WorkloadRef::new("shop", "web")))
    );
    // Terminal.
    let mut failed = base.clone();
    failed.status.as_mut().unwrap().phase = Some("Failed".into());
    assert!(convert::pod(&failed).is_none());
    // Host network: the node's addresses are not the pod's.
    let mut host = base.clone();
    host.spec.as_mut().unwrap().host_network = Some(true);
    assert!(convert::pod(&host).unwrap().workload.ips.is_empty());
    // A port name repeated across containers keeps its first port; mapped IPv4 is IPv4.
    let mut v = pod_json("shop", "web", "n1", json!({}), Some("::ffff:10.0.0.9"));
    v["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "d", "image": "i", "ports": [{"name": "http", "containerPort": 9}]}));
    let two: k8s_openapi::api::core::v1::Pod = serde_json::from_value(v).unwrap();
    let w = convert::pod(&two).unwrap().workload;
    assert_eq!(w.ports.len(), 1);
    assert_eq!(w.ports[0].port, 8080);
    assert_eq!(w.ips, ["10.0.0.9".parse::<std::net::IpAddr>().unwrap()]);
}

/// The kubelet names a static pod's cgroup after the static pod's UID (its config hash, 32 hex
/// digits unless the manifest sets a uid), which its mirror pod carries in the
/// `kubernetes.io/config.mirror` annotation; the mirror pod's own `metadata.uid` names no cgroup.
#[test]
fn a_mirror_pod_is_found_by_its_static_pods_uid() {
    let hash = "6f3b0c1e2d4a59876c0ffee123456789";
    let mut mirror = pod("kube-system", "etcd-n1", "n1", json!({}), Some("10.0.9.1"));
    let owner = |node: &str| OwnerReference {
        api_version: "v1".into(),
        kind: "Node".into(),
        name: node.into(),
        uid: format!("node-uid-{node}"),
        controller: Some(true),
        block_owner_deletion: None,
    };
    mirror.metadata.owner_references = Some(vec![owner("n1")]);
    mirror.metadata.annotations = Some(BTreeMap::from([
        ("kubernetes.io/config.mirror".to_owned(), hash.to_owned()),
        ("kubernetes.io/config.hash".to_owned(), hash.to_owned()),
    ]));
    assert_eq!(convert::pod(&mirror).unwrap().uid, hash);
    // A manifest that sets its own uid: kept as written (the enforcer escapes `-` for systemd).
    let uuid = "0b1e7e5a-3c4d-4e5f-8a9b-0c1d2e3f4a5b";
    mirror.metadata.annotations = Some(BTreeMap::from([(
        "kubernetes.io/config.mirror".to_owned(),
        uuid.to_owned(),
    )]));
    assert_eq!(convert::pod(&mirror).unwrap().uid, uuid);
    // Any other pod: its own uid.
    let base = pod("shop", "web", "n1", json!({}), None);
    assert_eq!(convert::pod(&base).unwrap().uid, "uid-shop-web");
    // The annotation on a pod its node does not own (anyone may write it) does not count: such
    // a pod cannot take over the static pod's cgroup.
    let mut forged = pod("shop", "web", "n1", json!({}), None);
    forged.metadata.annotations = Some(BTreeMap::from([(
        "kubernetes.io/config.mirror".to_owned(),
        hash.to_owned(),
    )]));
    assert_eq!(convert::pod(&forged).unwrap().uid, "uid-shop-web");
    forged.metadata.owner_references = Some(vec![owner("n2")]);
    assert_eq!(convert::pod(&forged).unwrap().uid, "uid-shop-web");
}

#[test]
fn policy_inputs_ignore_server_bookkeeping() {
    let mut a = netpol("shop", "web", "web", 8080, 3);
    let b = a.clone();
    a.metadata.resource_version = Some("99".into());
    a.metadata.annotations = Some(BTreeMap::from([("x".into(), "y".into())]));
    assert_eq!(convert::network_policy(&a), convert::network_policy(&b));
    assert_eq!(convert::network_policy(&a).generation, 3);
}

#[test]
fn realization_counts_nodes_that_acknowledged_the_generation() {
    let mut p = Pipeline::new(AllocationTable::new());
    let mut lists = shop(&mut p);
    let hub = SyncHub::default();
    let mut tracker = Tracker::default();
    let publish = |p: &mut Pipeline, tracker: &mut Tracker| {
        let f = p.flush(at()).unwrap();
        let r = hub.update(p.publishable_state().unwrap(), p.assignment());
        tracker.published(p, &f.policies, r, &hub.desired());
        r
    };
    let r1 = publish(&mut p, &mut tracker);
    // The hub publishes the pipeline's state: n1's view has web's identity and entries.
    let web_id = p.state().unwrap().workloads[&WorkloadRef::new("shop", "web")].identity;
    let view = hub.view("n1").unwrap();
    assert_eq!(view.revision, r1);
    assert!(
        view.view
            .policy
            .keys()
            .any(|k| k.key.local_identity == web_id)
    );
    let key = ObjectKey {
        kind: Kind::NetworkPolicy,
        namespace: Some("shop".into()),
        name: "web".into(),
    };
    let progress = |tracker: &mut Tracker, p: &Pipeline| {
        tracker
            .progress(p, &hub.desired(), &hub.realized(), hub.revision())
            .into_iter()
            .find(|x| x.key == key)
            .unwrap()
    };
    let x = progress(&mut tracker, &p);
    assert_eq!(x.desired_nodes, BTreeSet::from(["n1".to_owned()]));
    assert!(x.realized_nodes.is_empty());
    assert_eq!(
        (x.generation, x.applied_generation, x.published_revision),
        (1, Some(1), Some(r1))
    );
    // n1 acknowledges r1: realized.
    hub.acknowledge_for_test("n1", r1);
    let x = progress(&mut tracker, &p);
    assert_eq!(x.realized_nodes, x.desired_nodes);
    // Generation 2 (new port): n1 must acknowledge the new revision.
    lists.take(Event::Apply(netpol("shop", "web", "web", 9090, 2)), &mut p);
    let r2 = publish(&mut p, &mut tracker);
    assert!(r2 > r1);
    let x = progress(&mut tracker, &p);
    assert_eq!(
        (x.applied_generation, x.published_revision),
        (Some(2), Some(r2))
    );
    assert!(x.realized_nodes.is_empty());
    hub.acknowledge_for_test("n1", r2);
    assert_eq!(progress(&mut tracker, &p).realized_nodes.len(), 1);
    // A new subject pod on n3 (whose view changes): n3 is desired, realized once it acknowledges
    // its own revision.
    lists.take(
        Event::Apply(pod(
            "shop",
            "web3",
            "n3",
            json!({"app": "web"}),
            Some("10.0.0.3"),
        )),
        &mut p,
    );
    let r3 = publish(&mut p, &mut tracker);
    let x = progress(&mut tracker, &p);
    assert_eq!(x.desired_nodes.len(), 2);
    assert_eq!(x.realized_nodes, BTreeSet::from(["n1".to_owned()]));
    hub.acknowledge_for_test("n3", r3);
    assert_eq!(progress(&mut tracker, &p).realized_nodes.len(), 2);
}

#[test]
fn subject_nodes_follow_each_kind() {
    let mut p = Pipeline::new(AllocationTable::new());
    shop(&mut p);
    p.flush(at()).unwrap();
    let nodes = |o: PolicyObject| -> Vec<String> { p.subject_nodes(&o).into_iter().collect() };
    let cluster = |spec| convert::cluster_segmentation_policy(&cluster_segpol("c", spec, 1)).object;
    assert_eq!(nodes(shop_policies()[0].clone()), ["n1"]);
    assert_eq!(nodes(shop_policies()[1].clone()), ["n2"]);
    // Cluster scope: by namespace labels (the implied name label included), pods, accounts.
    let by_team = json!({"subject": {"namespaceSelector": {"matchLabels": {"team": "shop"}}}});
    assert_eq!(nodes(cluster(by_team)), ["n1", "n2"]);
    let by_name = json!({"subject": {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "db"}}}});
    assert_eq!(nodes(cluster(by_name)), ["n2"]);
    let everyone = json!({"subject": {}});
    assert_eq!(nodes(cluster(everyone)), ["n1", "n2"]);
    let other_account = json!({"subject": {"serviceAccounts": ["other"]}});
    assert!(nodes(cluster(other_account)).is_empty());
    let web = json!({"subject": {"podSelector": {"matchLabels": {"app": "web"}},
                                 "serviceAccounts": ["app"]}});
    assert_eq!(nodes(cluster(web)), ["n1"]);
}

#[test]
fn a_status_write_recompiles_nothing_and_unflushed_edits_report_nothing() {
    let mut p = Pipeline::new(AllocationTable::new());
    let mut lists = shop(&mut p);
    p.flush(at()).unwrap();
    let mut written = segpol("db", "pg", seg_spec("pg", 5432), 1);
    written.metadata.resource_version = Some("42".into());
    written.status = Some(bulkhead_policy::model::PolicyStatus {
        observed_generation: Some(1),
        ..Default::default()
    });
    lists.take(Event::Apply(written), &mut p);
    assert!(!p.dirty());
    let key = ObjectKey {
        kind: Kind::SegmentationPolicy,
        namespace: Some("db".into()),
        name: "pg".into(),
    };
    let hub = SyncHub::default();
    let mut tracker = Tracker::default();
    let progress = tracker.progress(&p, &hub.desired(), &hub.realized(), 0);
    let x = progress.iter().find(|x| x.key == key).unwrap();
    assert_eq!(
        x.stored_status.as_ref().unwrap().observed_generation,
        Some(1)
    );
    // An edit not flushed yet: its validity is unknown, so it is not reported.
    lists.take(
        Event::Apply(segpol("db", "pg", seg_spec("pg", 5433), 2)),
        &mut p,
    );
    let progress = tracker.progress(&p, &hub.desired(), &hub.realized(), 0);
    assert!(progress.iter().all(|x| x.key != key));
    p.flush(at()).unwrap();
    let progress = tracker.progress(&p, &hub.desired(), &hub.realized(), 0);
    let x = progress.iter().find(|x| x.key == key).unwrap();
    assert_eq!((x.generation, x.applied_generation), (2, Some(2)));
}

/// Measurement (run with `--release -- --ignored --nocapture`) at the scale: 5,000
/// nodes, 50,000 pods over 100 namespaces (50 label sets each: 5,000 identities), 2,000 policies
/// (10 NetworkPolicies and 10 SegmentationPolicies per namespace). The initial lists, one pod
/// relabel and one policy edit, each compiled and published to a hub; the final state is checked
/// against a fresh compile.
#[test]
#[ignore = "measurement"]
fn scale_initial_lists_and_one_change() {
    use std::time::Instant;
    let (nodes, pods, namespaces, apps) = (5_000, 50_000, 100, 50);
    let app_of = |i: usize| format!("app-{}", (i / namespaces) % apps);
    let pod_at = |i: usize, app: &str| {
        let ip = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255);
        let (ns, node) = (
            format!("ns-{}", i % namespaces),
            format!("node-{}", i % nodes),
        );
        pod(
            &ns,
            &format!("pod-{i}"),
            &node,
            json!({"app": app}),
            Some(&ip),
        )
    };
    let netpols = || {
        (0..namespaces * 10).map(|k| {
            let (ns, j) = (k % namespaces, k / namespaces);
            netpol(
                &format!("ns-{ns}"),
                &format!("np-{j}"),
                &format!("app-{j}"),
                8080,
                1,
            )
        })
    };
    let segpols = || {
        (0..namespaces * 10).map(|k| {
            let (ns, j) = (k % namespaces, k / namespaces);
            let spec = seg_spec(&format!("app-{}", 10 + j), 9000 + j as u16);
            segpol(&format!("ns-{ns}"), &format!("sp-{j}"), spec, 1)
        })
    };
    let ns_labels = |i: usize| json!({"team": format!("t{}", i % 7)});
    let mut p = Pipeline::new(AllocationTable::new());
    let mut lists = Lists::default();
    list(
        &mut lists,
        &mut p,
        (0..namespaces)
            .map(|i| namespace(&format!("ns-{i}"), ns_labels(i)))
            .collect(),
    );
    list(
        &mut lists,
        &mut p,
        (0..nodes).map(|i| node(&format!("node-{i}"))).collect(),
    );
    list(
        &mut lists,
        &mut p,
        (0..pods).map(|i| pod_at(i, &app_of(i))).collect(),
    );
    list(&mut lists, &mut p, netpols().collect());
    list(&mut lists, &mut p, segpols().collect());
    list::<bulkhead_policy::model::ClusterSegmentationPolicy>(&mut lists, &mut p, vec![]);
    let hub = SyncHub::default();
    let t = Instant::now();
    let f = p.flush(at()).unwrap();
    let compiled = t.elapsed();
    let r = p.publish(&hub).unwrap();
    println!(
        "initial lists ({nodes} nodes, {pods} pods, {} policies, {} identities): compile {compiled:?}, compile + publish {:?}, revision {r}",
        p.policies().len(),
        p.table().unwrap().entries().len(),
        t.elapsed()
    );
    assert_eq!(f.full_compiles, 1);
    let mut tracker = Tracker::default();
    let t = Instant::now();
    tracker.published(&p, &f.policies, r, &hub.desired());
    let recorded = t.elapsed();
    let t = Instant::now();
    let progress = tracker.progress(&p, &hub.desired(), &hub.realized(), hub.revision());
    let desired: usize = progress.iter().map(|x| x.desired_nodes.len()).sum();
    println!(
        "realization: recording the initial publication {recorded:?}, one status pass over {} policies {:?} ({desired} desired policy-nodes)",
        progress.len(),
        t.elapsed()
    );
    assert_eq!(progress.len(), 2_000);
    let change = |what: &str, p: &mut Pipeline| {
        let t = Instant::now();
        let f = p.flush(at()).unwrap();
        let compiled = t.elapsed();
        let before = hub.desired();
        let r = p.publish(&hub).unwrap();
        let published = t.elapsed();
        let nodes_changed = hub
            .desired()
            .iter()
            .filter(|(n, v)| before.get(*n) != Some(v))
            .count();
        println!(
            "{what}: compile {compiled:?} ({} compiler call), compile + publish (deltas ready) {published:?}, revision {r}, {nodes_changed} nodes got a delta",
            f.compiler_calls
        );
    };
    lists.take(Event::Apply(pod_at(5, "moved")), &mut p);
    change("one pod relabel", &mut p);
    let edited = segpol("ns-3", "sp-2", seg_spec("app-12", 9500), 2);
    lists.take(Event::Apply(edited), &mut p);
    change("one policy edit", &mut p);
    let state = p.state().unwrap().clone();
    let policies: Vec<PolicyObject> = p
        .policies()
        .values()
        .map(|r| r.input.object.clone())
        .collect();
    let names: Vec<String> = (0..namespaces).map(|i| format!("ns-{i}")).collect();
    let namespaces_in: Vec<_> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), labels(ns_labels(i))))
        .collect();
    let workloads: Vec<Workload> = (0..pods)
        .map(|i| {
            let app = if i == 5 {
                "moved".to_owned()
            } else {
                app_of(i)
            };
            convert::pod(&pod_at(i, &app)).unwrap().workload
        })
        .collect();
    assert_eq!(
        state,
        fresh(&table(&p), policies, &namespaces_in, workloads)
    );
}

#[test]
fn publishing_changed_keys_equals_publishing_the_whole_state() {
    let mut p = Pipeline::new(AllocationTable::new());
    let mut lists = shop(&mut p);
    let (by_keys, whole) = (SyncHub::default(), SyncHub::default());
    let step = |p: &mut Pipeline, what: &str| {
        p.flush(at()).unwrap();
        let r = p.publish(&by_keys).unwrap();
        let r_whole = whole.update(p.publishable_state().unwrap(), p.assignment());
        assert_eq!(r, r_whole, "{what}: revision");
        assert_eq!(by_keys.desired(), whole.desired(), "{what}: node revisions");
        for n in whole.desired().keys() {
            assert_eq!(
                by_keys.view(n).unwrap().view,
                whole.view(n).unwrap().view,
                "{what}: node {n}"
            );
        }
    };
    step(&mut p, "initial");
    type Step = Box<dyn Fn(&mut Lists, &mut Pipeline)>;
    let events: Vec<(&str, Step)> = vec![
        (
            "relabel",
            Box::new(|l, p| l.take(Event::Apply(client_as_web()), p)),
        ),
        (
            "new pod",
            Box::new(|l, p| {
                l.take(
                    Event::Apply(pod(
                        "db",
                        "pg2",
                        "n3",
                        json!({"app": "pg"}),
                        Some("10.0.1.2"),
                    )),
                    p,
                )
            }),
        ),
        (
            "policy edit",
            Box::new(|l, p| l.take(Event::Apply(netpol("shop", "web", "web", 9090, 2)), p)),
        ),
        (
            "policy removal",
            Box::new(|l, p| l.take(Event::Delete(segpol("db", "pg", json!({}), 1)), p)),
        ),
        (
            "address reuse",
            Box::new(|l, p| {
                l.take(Event::Delete(pod("shop", "web", "n1", json!({}), None)), p);
                l.take(
                    Event::Apply(pod(
                        "shop",
                        "web2",
                        "n1",
                        json!({"app": "web"}),
                        Some("10.0.0.1"),
                    )),
                    p,
                )
            }),
        ),
        (
            "namespace relabel",
            Box::new(|l, p| l.take(Event::Apply(namespace("shop", json!({"team": "x"}))), p)),
        ),
        (
            "new namespace",
            Box::new(|l, p| {
                l.take(Event::Apply(namespace("new", json!({}))), p);
                l.take(
                    Event::Apply(pod("new", "a", "n2", json!({"app": "a"}), Some("10.0.2.1"))),
                    p,
                )
            }),
        ),
        (
            "pod moves node",
            Box::new(|l, p| {
                l.take(
                    Event::Apply(pod("new", "a", "n3", json!({"app": "a"}), Some("10.0.2.1"))),
                    p,
                )
            }),
        ),
        (
            "node goes",
            Box::new(|l, p| l.take(Event::Delete(node("n1")), p)),
        ),
    ];
    for (what, event) in events {
        event(&mut lists, &mut p);
        step(&mut p, what);
    }
}

#[test]
fn a_rule_window_closing_recompiles_at_that_instant() {
    let mut p = Pipeline::new(AllocationTable::new());
    let mut lists = shop(&mut p);
    p.flush(at()).unwrap();
    let mut spec = seg_spec("pg", 5432);
    spec["ingress"][0]["expiresAt"] = json!("2026-11-28T01:00:00Z");
    let windowed = segpol("db", "pg", spec, 2);
    lists.take(Event::Apply(windowed.clone()), &mut p);
    p.flush(at()).unwrap();
    let closes: jiff::Timestamp = "2026-11-28T01:00:00Z".parse().unwrap();
    assert_eq!(p.state().unwrap().next_change, Some(closes));
    let mut policies = shop_policies();
    policies[1] = convert::segmentation_policy(&windowed).object;
    // Before the instant nothing is due; at it, one full compile at the new instant.
    let f = p.flush(at()).unwrap();
    assert_eq!(f.compiler_calls, 0);
    let later = closes + jiff::SignedDuration::from_secs(1);
    let f = p.flush(later).unwrap();
    assert_eq!((f.compiler_calls, f.full_compiles), (1, 1));
    assert_eq!(p.state().unwrap().next_change, None);
    let want = fresh_at(
        &table(&p),
        policies,
        &shop_namespaces(),
        shop_workloads(),
        later,
    );
    assert_eq!(p.state().unwrap(), &want);
}
