//! The whole controller (`cluster::run`: its watchers, the incremental compiler, the identity
//! ConfigMap, the SyncHub) against the fake API server while objects change live: after every
//! change each node's view equals what a fresh compile of the server's objects (with the stored
//! identity table) gives, and the specific entries a change must move do move. Also through a
//! dropped watch, an expired history (re-list) and a restart (identities kept).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use bulkhead_controller::cluster::identities::TABLE_KEY;
use bulkhead_controller::cluster::{self, convert};
use bulkhead_controller::sync::{NodeAssignment, SyncHub};
use bulkhead_controller::testing::FakeApiServer;
use bulkhead_policy::model::{
    ClusterSegmentationPolicy, Namespace as InvNamespace, SegmentationPolicy,
};
use bulkhead_policy::{AllocationTable, Compiler, Inventory, PolicySet};
use bulkhead_proto::NodeView;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// Failure guard for the controller catching up (not a performance claim).
const PATIENCE: Duration = Duration::from_secs(60);
const CM_NAMESPACE: &str = "bulkhead";
const CM_NAME: &str = "ids";

fn object<K: DeserializeOwned>(value: Value) -> K {
    serde_json::from_value(value).expect("test object")
}

fn namespace(name: &str, labels: Value) -> Namespace {
    let mut labels = labels;
    labels["kubernetes.io/metadata.name"] = json!(name);
    object(json!({"metadata": {"name": name, "labels": labels}}))
}

fn node(name: &str) -> Node {
    object(json!({"metadata": {"name": name}}))
}

fn pod(ns: &str, name: &str, node: &str, app: &str, ip: &str) -> Pod {
    object(json!({
        "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
        "spec": {"nodeName": node, "serviceAccountName": "app",
                 "containers": [{"name": "c", "image": "i",
                                 "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    }))
}

/// `shop/web`: pods `app=web` admit TCP 8080 from pods `app=client`.
fn netpol() -> NetworkPolicy {
    object(json!({
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                              "ports": [{"port": 8080}]}]},
    }))
}

/// `db/pg`: pods `app=pg` admit TCP 5432 from their namespace.
fn segpol() -> SegmentationPolicy {
    object(json!({
        "apiVersion": "bulkhead.dev/v1alpha1", "kind": "SegmentationPolicy",
        "metadata": {"name": "pg", "namespace": "db"},
        "spec": {"priority": 10, "subject": {"podSelector": {"matchLabels": {"app": "pg"}}},
                 "ingress": [{"action": "Allow", "from": [{"podSelector": {}}],
                              "ports": [{"protocol": "TCP", "port": 5432}]}]},
    }))
}

/// Admin tier: every pod's egress to the metadata service is denied.
fn cluster_policy() -> ClusterSegmentationPolicy {
    object(json!({
        "apiVersion": "bulkhead.dev/v1alpha1", "kind": "ClusterSegmentationPolicy",
        "metadata": {"name": "no-metadata"},
        "spec": {"tier": "Admin", "priority": 10, "subject": {"namespaceSelector": {}},
                 "egress": [{"action": "Deny", "to": [{"cidr": "169.254.169.254/32"}]}]},
    }))
}

async fn seeded_server() -> FakeApiServer {
    let server = FakeApiServer::start().await.expect("fake API server");
    server
        .apply(&namespace("shop", json!({"team": "shop"})))
        .expect("ns");
    server.apply(&namespace("db", json!({}))).expect("ns");
    server.apply(&node("n1")).expect("node");
    server.apply(&node("n2")).expect("node");
    server
        .apply(&pod("shop", "web", "n1", "web", "10.0.0.1"))
        .expect("pod");
    server
        .apply(&pod("shop", "client", "n2", "client", "10.0.0.2"))
        .expect("pod");
    server
        .apply(&pod("db", "pg", "n2", "pg", "10.0.1.1"))
        .expect("pod");
    server.apply(&netpol()).expect("netpol");
    server.apply(&segpol()).expect("segpol");
    server
}

fn start(server: &FakeApiServer, hub: &SyncHub) -> JoinHandle<Result<(), cluster::RunError>> {
    let client = server.client().expect("client");
    let config = cluster::Config::new(CM_NAMESPACE, CM_NAME);
    tokio::spawn(cluster::run(client, hub.clone(), config))
}

/// The identity table the controller stored, if any.
fn stored_table(server: &FakeApiServer) -> Option<(AllocationTable, String)> {
    let cm = server
        .get::<ConfigMap>(Some(CM_NAMESPACE), CM_NAME)
        .expect("get")?;
    let text = cm.data?.get(TABLE_KEY)?.clone();
    let table = serde_json::from_str(&text).expect("stored table parses");
    Some((table, cm.metadata.resource_version.unwrap_or_default()))
}

/// Every node's view from a fresh compile of the server's objects with `table`.
fn fresh_views(server: &FakeApiServer, table: &AllocationTable) -> BTreeMap<String, NodeView> {
    let mut policies = Vec::new();
    for p in server.list::<NetworkPolicy>().expect("netpols") {
        policies.push(("api".to_string(), convert::network_policy(&p).object));
    }
    for p in server.list::<SegmentationPolicy>().expect("segpols") {
        policies.push(("api".to_string(), convert::segmentation_policy(&p).object));
    }
    for p in server
        .list::<ClusterSegmentationPolicy>()
        .expect("cluster policies")
    {
        policies.push((
            "api".to_string(),
            convert::cluster_segmentation_policy(&p).object,
        ));
    }
    let set = PolicySet::from_objects(policies).expect("policy set");
    let namespaces = server.list::<Namespace>().expect("namespaces");
    let pods: Vec<_> = server
        .list::<Pod>()
        .expect("pods")
        .iter()
        .filter_map(convert::pod)
        .collect();
    let inventory = Inventory {
        namespaces: namespaces
            .iter()
            .map(|n| InvNamespace {
                name: n.metadata.name.clone().unwrap_or_default(),
                labels: convert::namespace_labels(
                    n.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()),
                ),
            })
            .collect(),
        workloads: pods.iter().map(|p| p.workload.clone()).collect(),
    };
    let state = Compiler::new(table.clone())
        .compile(&set, &inventory, jiff::Timestamp::now())
        .expect("fresh compile");
    let mut assignment = NodeAssignment::new();
    for n in server.list::<Node>().expect("nodes") {
        assignment.insert(n.metadata.name.unwrap_or_default(), BTreeMap::new());
    }
    for p in &pods {
        assignment
            .entry(p.node.clone())
            .or_default()
            .insert(p.reference(), p.uid.clone());
    }
    let hub = SyncHub::default();
    hub.update(state, &assignment);
    assignment
        .keys()
        .map(|n| (n.clone(), hub.view(n).expect("fresh view").view))
        .collect()
}

/// Waits until every node's view in `hub` equals the fresh compile's (and no other node has
/// one); returns the views.
async fn views_follow(
    server: &FakeApiServer,
    hub: &SyncHub,
    what: &str,
) -> BTreeMap<String, NodeView> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let mismatch = match stored_table(server) {
            None => "no identity table stored yet".to_string(),
            Some((table, _)) => {
                let want = fresh_views(server, &table);
                let extra = hub.desired().into_keys().find(|n| !want.contains_key(n));
                match want
                    .iter()
                    .find(|(n, v)| hub.view(n).map(|s| s.view).as_ref() != Some(*v))
                {
                    Some((node, _)) => format!("node {node} differs from a fresh compile"),
                    None => match extra {
                        Some(node) => format!("the hub has a view for unknown node {node}"),
                        None => return want,
                    },
                }
            }
        };
        assert!(tokio::time::Instant::now() < deadline, "{what}: {mismatch}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn mapped(ip: &str) -> [u8; 16] {
    match ip.parse::<IpAddr>().expect("ip") {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The identity the view's address table gives `ip`.
fn address_identity(view: &NodeView, ip: &str) -> Option<u32> {
    view.addresses
        .iter()
        .find(|(k, _)| k.addr == mapped(ip))
        .map(|(_, id)| *id)
}

/// The identity of the view's pod `ns/name`.
fn pod_identity(view: &NodeView, ns: &str, name: &str) -> Option<u32> {
    view.workloads
        .iter()
        .find(|(p, _)| p.namespace == ns && p.name == name)
        .map(|(_, id)| *id)
}

/// Whether the view holds policy entries for `identity` as the local side.
fn has_policy_for(view: &NodeView, identity: u32) -> bool {
    view.policy.keys().any(|k| k.key.local_identity == identity)
}

/// Every pod's identity across the views: `ns/name` -> identity.
fn identities(views: &BTreeMap<String, NodeView>) -> BTreeMap<String, u32> {
    views
        .values()
        .flat_map(|v| {
            v.workloads
                .iter()
                .map(|(p, id)| (format!("{}/{}", p.namespace, p.name), *id))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_follows_live_changes_and_keeps_identities_across_restarts() {
    let server = seeded_server().await;
    let hub = SyncHub::default();
    let runner = start(&server, &hub);

    // Initial lists: each node holds its pods, the whole address table, and the entries of
    // the policies that select its pods.
    let views = views_follow(&server, &hub, "initial publication").await;
    assert_eq!(views.keys().collect::<Vec<_>>(), ["n1", "n2"]);
    let web = pod_identity(&views["n1"], "shop", "web").expect("web on n1");
    let pg = pod_identity(&views["n2"], "db", "pg").expect("pg on n2");
    assert!(
        pod_identity(&views["n1"], "db", "pg").is_none(),
        "pg runs on n2 only"
    );
    for view in views.values() {
        assert_eq!(address_identity(view, "10.0.0.1"), Some(web));
        assert_eq!(address_identity(view, "10.0.1.1"), Some(pg));
    }
    assert!(
        has_policy_for(&views["n1"], web),
        "the NetworkPolicy isolates web"
    );
    assert!(
        has_policy_for(&views["n2"], pg),
        "the SegmentationPolicy isolates pg"
    );

    // Relabel web out of the NetworkPolicy: a new identity, no policy entries for it.
    server
        .apply(&pod("shop", "web", "n1", "other", "10.0.0.1"))
        .expect("relabel");
    let views = views_follow(&server, &hub, "relabel").await;
    let relabeled = pod_identity(&views["n1"], "shop", "web").expect("web on n1");
    assert_ne!(relabeled, web);
    assert_eq!(address_identity(&views["n2"], "10.0.0.1"), Some(relabeled));
    assert!(!has_policy_for(&views["n1"], relabeled));

    // Delete the SegmentationPolicy: pg is no longer isolated.
    assert!(
        server
            .delete::<SegmentationPolicy>(Some("db"), "pg")
            .expect("delete")
    );
    let views = views_follow(&server, &hub, "policy deletion").await;
    assert!(!has_policy_for(&views["n2"], pg));

    // A pod on a new node: the node gets a view with it, every node its address.
    server.apply(&node("n3")).expect("node");
    server
        .apply(&pod("shop", "late", "n3", "client", "10.0.0.3"))
        .expect("pod");
    let views = views_follow(&server, &hub, "pod on a new node").await;
    let late = pod_identity(&views["n3"], "shop", "late").expect("late on n3");
    assert_eq!(address_identity(&views["n1"], "10.0.0.3"), Some(late));

    // The watches drop; while they are down web is relabeled back: resumed, not re-listed.
    let lists = server.lists_of("/api/v1/pods");
    server.drop_watches();
    server
        .apply(&pod("shop", "web", "n1", "web", "10.0.0.1"))
        .expect("relabel back");
    let views = views_follow(&server, &hub, "change during a dropped watch").await;
    assert_eq!(
        pod_identity(&views["n1"], "shop", "web"),
        Some(web),
        "the label set's number is kept"
    );
    assert!(has_policy_for(&views["n1"], web));
    assert_eq!(
        server.lists_of("/api/v1/pods"),
        lists,
        "the pod watch resumed without a re-list"
    );

    // The history expires while the watches are down: the watchers re-list, and a pod deleted
    // meanwhile disappears (the re-list rule), a policy restored meanwhile returns.
    server.drop_watches();
    assert!(
        server
            .delete::<Pod>(Some("shop"), "client")
            .expect("delete")
    );
    server.apply(&segpol()).expect("segpol back");
    server.expire_history();
    let views = views_follow(&server, &hub, "re-list after expired history").await;
    assert!(pod_identity(&views["n2"], "shop", "client").is_none());
    assert_eq!(address_identity(&views["n1"], "10.0.0.2"), None);
    assert!(has_policy_for(&views["n2"], pg));
    assert!(
        server.lists_of("/api/v1/pods") > lists,
        "the pod watcher re-listed"
    );

    // A cluster policy and a namespace relabel arrive through the cluster-scoped watches.
    let before = views["n1"].policy.len();
    server.apply(&cluster_policy()).expect("cluster policy");
    server
        .apply(&namespace("shop", json!({"team": "web"})))
        .expect("namespace relabel");
    let views = views_follow(&server, &hub, "cluster policy and namespace labels").await;
    assert!(
        views["n1"].policy.len() > before,
        "the cluster policy adds entries"
    );

    // Restart on the same server with a new hub: every pod keeps its number, and nothing new
    // was allocated, so the ConfigMap is not rewritten.
    let before = identities(&views);
    let (_, stored_version) = stored_table(&server).expect("table stored");
    runner.abort();
    assert!(runner.await.expect_err("aborted").is_cancelled());
    let restarted = SyncHub::default();
    let runner = start(&server, &restarted);
    let views = views_follow(&server, &restarted, "restart").await;
    assert_eq!(identities(&views), before);
    assert_eq!(stored_table(&server).expect("table").1, stored_version);
    runner.abort();
}
