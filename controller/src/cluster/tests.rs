//! Pure tests of the translation: watch events -> pipeline -> compiler, checked against fresh
//! compiles of the same objects; realization tracking against a hub.

use std::collections::{BTreeMap, BTreeSet};

use bulkhead_policy::model::Workload;
use bulkhead_policy::{AllocationTable, Kind, ObjectKey, PolicyObject, WorkloadRef};
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
    lists.take(
        Event::Apply(pod(
            "shop",
            "client",
            "n2",
            json!({"app": "web"}),
            Some("10.0.0.2"),
        )),
        &mut p,
    );
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

/// Measurement (run with `--release -- --ignored --nocapture`): a cluster of `nodes` nodes,
/// `pods` pods over 100 namespaces (10 label sets per namespace), one NetworkPolicy and one
/// SegmentationPolicy per namespace; the initial lists, then one pod relabel, each compiled and
/// published. Checks the final state against a fresh compile.
#[test]
#[ignore = "measurement"]
fn scale_initial_lists_and_one_pod_event() {
    use std::time::Instant;
    let (nodes, pods) = (500, 10_000);
    let mut p = Pipeline::new(AllocationTable::new());
    let mut lists = Lists::default();
    let namespaces: Vec<_> = (0..100)
        .map(|i| namespace(&format!("ns-{i}"), json!({"team": format!("t{}", i % 7)})))
        .collect();
    list(&mut lists, &mut p, namespaces);
    list(
        &mut lists,
        &mut p,
        (0..nodes).map(|i| node(&format!("node-{i}"))).collect(),
    );
    let pod_at = |i: usize, app: &str| {
        let ip = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255);
        pod(
            &format!("ns-{}", i % 100),
            &format!("pod-{i}"),
            &format!("node-{}", i % nodes),
            json!({"app": app}),
            Some(&ip),
        )
    };
    list(
        &mut lists,
        &mut p,
        (0..pods)
            .map(|i| pod_at(i, &format!("app-{}", (i / 100) % 10)))
            .collect(),
    );
    list(
        &mut lists,
        &mut p,
        (0..100)
            .map(|i| netpol(&format!("ns-{i}"), "np", "app-0", 8080, 1))
            .collect(),
    );
    list(
        &mut lists,
        &mut p,
        (0..100)
            .map(|i| segpol(&format!("ns-{i}"), "sp", seg_spec("app-1", 9090), 1))
            .collect(),
    );
    list::<bulkhead_policy::model::ClusterSegmentationPolicy>(&mut lists, &mut p, vec![]);
    let hub = SyncHub::default();
    let t = Instant::now();
    let f = p.flush(at()).unwrap();
    let compiled = t.elapsed();
    let r = hub.update(p.publishable_state().unwrap(), p.assignment());
    let published = t.elapsed();
    println!(
        "initial lists ({nodes} nodes, {pods} pods, 200 policies, {} identities): compile {compiled:?}, compile + publish {published:?}, revision {r}",
        p.table().unwrap().entries().len()
    );
    assert_eq!(f.full_compiles, 1);
    // One pod relabelled to a new label set.
    lists.take(Event::Apply(pod_at(5, "moved")), &mut p);
    let t = Instant::now();
    let f = p.flush(at()).unwrap();
    let compiled = t.elapsed();
    hub.update(p.publishable_state().unwrap(), p.assignment());
    let published = t.elapsed();
    println!(
        "one pod relabel: compile {compiled:?} ({} compiler call), compile + publish {published:?}",
        f.compiler_calls
    );
    let state = p.state().unwrap().clone();
    let policies: Vec<PolicyObject> = p
        .policies()
        .values()
        .map(|r| r.input.object.clone())
        .collect();
    let mut namespaces_in = Vec::new();
    let names: Vec<String> = (0..100).map(|i| format!("ns-{i}")).collect();
    for (i, n) in names.iter().enumerate() {
        namespaces_in.push((n.as_str(), labels(json!({"team": format!("t{}", i % 7)}))));
    }
    let workloads: Vec<Workload> = (0..pods)
        .map(|i| {
            let app = if i == 5 {
                "moved".to_owned()
            } else {
                format!("app-{}", (i / 100) % 10)
            };
            convert::pod(&pod_at(i, &app)).unwrap().workload
        })
        .collect();
    assert_eq!(
        state,
        fresh(&table(&p), policies, &namespaces_in, workloads)
    );
}
