//! The whole controller (`cluster::run`: its watchers, the incremental compiler, the identity
//! ConfigMap, the SyncHub) against the fake API server while objects change live: after every
//! change each node's view equals what a fresh compile of the server's objects (with the stored
//! identity table) gives, and the specific entries a change must move do move. Also through a
//! dropped watch, an expired history (re-list) and a restart (identities kept).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bulkhead_controller::cluster::identities::TABLE_KEY;
use bulkhead_controller::cluster::lead::lead_when_elected;
use bulkhead_controller::cluster::{self, Controller, convert};
use bulkhead_controller::leader::{LeaderElector, LeaseConfig};
use bulkhead_controller::metrics::Metrics;
use bulkhead_controller::sync;
use bulkhead_controller::sync::{NodeAssignment, SyncHub};
use bulkhead_controller::testing::{FakeApiServer, PATIENCE, eventually};
use bulkhead_policy::model::status::{REALIZED, VALID};
use bulkhead_policy::model::{
    ClusterSegmentationPolicy, Namespace as InvNamespace, SegmentationPolicy,
};
use bulkhead_policy::{AllocationTable, Compiler, Inventory, PolicySet};
use bulkhead_proto::security::Security;
use bulkhead_proto::wire::{self, policy_sync_client::PolicySyncClient};
use bulkhead_proto::{ControllerMsg, EnforcerMsg, NodeView};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::events::Reporter;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

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

/// A stand-in enforcer for `node`: syncs from the sync service at `addr` (reconnecting while it
/// refuses or ends the stream), keeps the view it is sent and acknowledges every revision.
fn enforcer(addr: SocketAddr, node: &str) -> (Arc<Mutex<Option<NodeView>>>, JoinHandle<()>) {
    let held = Arc::new(Mutex::new(None));
    let (node, view) = (node.to_string(), held.clone());
    let task = tokio::spawn(async move {
        loop {
            if let Err(error) = sync_and_ack(addr, &node, &view).await {
                tracing::debug!(%node, %error, "stand-in enforcer: reconnecting");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    (held, task)
}

async fn sync_and_ack(
    addr: SocketAddr,
    node: &str,
    held: &Mutex<Option<NodeView>>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let (tx, rx) = mpsc::channel(16);
    let hello = EnforcerMsg::Hello {
        node_name: node.to_string(),
        held_epoch: 0,
        held_revision: 0,
    };
    tx.send(wire::EnforcerMessage::from(&hello)).await?;
    let mut inbound = PolicySyncClient::new(channel)
        .sync(ReceiverStream::new(rx))
        .await?
        .into_inner();
    while let Some(message) = inbound.message().await? {
        let revision = match ControllerMsg::try_from(&message)? {
            ControllerMsg::Snapshot(s) => {
                *held.lock().expect("view lock") = Some(s.view);
                s.revision
            }
            ControllerMsg::Delta(d) => {
                held.lock()
                    .expect("view lock")
                    .as_mut()
                    .ok_or("a delta before any snapshot")?
                    .apply(&d)?;
                d.revision
            }
        };
        tx.send(wire::EnforcerMessage::from(&EnforcerMsg::Ack { revision }))
            .await?;
    }
    Ok(())
}

/// One controller replica: its hub served on a loopback port, leader election on the fake
/// server's Lease, and while elected the pipeline with the status and Event reports.
struct Replica {
    hub: SyncHub,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Replica {
    async fn start(server: &FakeApiServer, identity: &str) -> Self {
        let hub = SyncHub::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let served = hub.clone();
        let serve = tokio::spawn(async move {
            let result = sync::serve(
                served,
                listener,
                &Security::DevPlaintext,
                std::future::pending(),
            )
            .await;
            assert!(result.is_ok(), "sync service: {result:?}");
        });
        let client = server.client().expect("client");
        let lease = LeaseConfig {
            lease_duration: Duration::from_secs(2),
            renew_deadline: Duration::from_secs(1),
            retry_period: Duration::from_millis(100),
            ..LeaseConfig::new("bulkhead-controller", CM_NAMESPACE, identity)
        };
        let elector = LeaderElector::new(client.clone(), lease).expect("elector");
        let leading = elector.subscribe();
        let (stop, stopped) = oneshot::channel::<()>();
        let elect = tokio::spawn(async move {
            let result = elector
                .run(async { stopped.await.unwrap_or_default() })
                .await;
            assert!(result.is_ok(), "leader election: {result:?}");
        });
        let controller = Controller::new(
            hub.clone(),
            cluster::Config::new(CM_NAMESPACE, CM_NAME),
            Arc::new(Metrics::default()),
        );
        let reporter = Reporter {
            controller: "bulkhead-controller".into(),
            instance: Some(identity.into()),
        };
        let lead = tokio::spawn(async move {
            let interval = Duration::from_millis(50);
            let result =
                lead_when_elected(&controller, &client, &reporter, interval, leading).await;
            assert!(result.is_ok(), "lead: {result:?}");
        });
        Self {
            hub,
            addr,
            stop: Some(stop),
            tasks: vec![serve, elect, lead],
        }
    }

    /// Shuts the replica down as the binary does: leader election stops and releases the lease.
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            stop.send(()).expect("elector running");
        }
        let serve = self.tasks.remove(0);
        for task in self.tasks {
            tokio::time::timeout(PATIENCE, task)
                .await
                .expect("replica stops in time")
                .expect("replica task");
        }
        serve.abort();
    }
}

fn lease_holder(server: &FakeApiServer) -> Option<String> {
    server
        .get::<Lease>(Some(CM_NAMESPACE), "bulkhead-controller")
        .expect("get lease")?
        .spec?
        .holder_identity
}

fn condition(policy: &SegmentationPolicy, kind: &str) -> Option<(String, String, String)> {
    let c = policy
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == kind)?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Waits until the stored policy `ns/name` satisfies `done` at its current generation.
async fn policy_status(
    server: &FakeApiServer,
    ns: &str,
    name: &str,
    what: &str,
    done: impl Fn(&SegmentationPolicy) -> bool,
) -> SegmentationPolicy {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let policy = server
            .get::<SegmentationPolicy>(Some(ns), name)
            .expect("get")
            .expect("stored");
        let current = policy.status.as_ref().and_then(|s| s.observed_generation)
            == policy.metadata.generation;
        if current && done(&policy) {
            return policy;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: last status {:?}",
            policy.status
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn realized(policy: &SegmentationPolicy, desired: i32, realized: i32) -> bool {
    let status = policy.status.as_ref();
    status.and_then(|s| s.desired_nodes) == Some(desired)
        && status.and_then(|s| s.realized_nodes) == Some(realized)
        && condition(policy, REALIZED)
            .is_some_and(|c| c.0 == if desired == realized { "True" } else { "False" })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_elected_replica_writes_statuses_and_events_from_acknowledgements_and_hands_over() {
    let server = seeded_server().await;
    let mut bad = segpol();
    bad.metadata.name = Some("bad".into());
    bad.spec.subject.pod_selector = Some(object(json!({"matchExpressions": [
        {"key": "app", "operator": "Matches", "values": ["pg"]}
    ]})));
    server.apply(&bad).expect("invalid policy");

    // Replica a is elected; b, started after, stands by.
    let a = Replica::start(&server, "a").await;
    eventually("a holds the lease", || {
        lease_holder(&server).as_deref() == Some("a")
    })
    .await;
    let b = Replica::start(&server, "b").await;

    // Before any enforcer acknowledged: pg (on n2) is desired on 1 node, realized on none.
    let pg = policy_status(&server, "db", "pg", "pg pending", |p| {
        condition(p, VALID).is_some_and(|c| c.0 == "True") && realized(p, 1, 0)
    })
    .await;
    assert_eq!(
        condition(&pg, REALIZED).expect("Realized").1,
        "RealizationPending"
    );
    // The invalid policy: Valid=False naming the field, not realized, and a Warning Event.
    let invalid = policy_status(&server, "db", "bad", "bad invalid", |p| {
        condition(p, VALID).is_some_and(|c| c.0 == "False")
    })
    .await;
    let (_, reason, message) = condition(&invalid, VALID).expect("Valid");
    assert_eq!(reason, "ValidationFailed");
    assert!(
        message.contains("matchExpressions[0].operator"),
        "{message}"
    );
    assert_eq!(
        condition(&invalid, REALIZED).expect("Realized").1,
        "PolicyInvalid"
    );
    eventually("the InvalidPolicy event", || {
        server.list::<Event>().expect("events").iter().any(|e| {
            e.reason.as_deref() == Some("InvalidPolicy")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("bad")
        })
    })
    .await;

    // Enforcers for n1 and n2 sync from a and acknowledge: pg is realized, and each holds its
    // node's view as published.
    let (n1, e1) = enforcer(a.addr, "n1");
    let (n2, e2) = enforcer(a.addr, "n2");
    policy_status(&server, "db", "pg", "pg realized", |p| realized(p, 1, 1)).await;
    for (node, held) in [("n1", &n1), ("n2", &n2)] {
        let want = a.hub.view(node).expect("view").view;
        eventually("enforcer view", || {
            held.lock().expect("view lock").as_ref() == Some(&want)
        })
        .await;
    }
    assert!(
        !b.hub.serving() && b.hub.revision() == 0,
        "the standby publishes nothing"
    );
    e1.abort();
    e2.abort();

    // a shuts down and releases the lease: b takes over, publishes, and reports a new
    // generation of pg as pending until enforcers acknowledge b's revisions.
    a.stop().await;
    eventually("b holds the lease", || {
        lease_holder(&server).as_deref() == Some("b")
    })
    .await;
    let mut changed = segpol();
    changed.spec.priority = 20;
    server.apply(&changed).expect("pg generation 2");
    let pg = policy_status(&server, "db", "pg", "pg generation 2 pending on b", |p| {
        realized(p, 1, 0)
    })
    .await;
    assert_eq!(
        pg.status.as_ref().and_then(|s| s.observed_generation),
        Some(2)
    );
    let (_, e1) = enforcer(b.addr, "n1");
    let (_, e2) = enforcer(b.addr, "n2");
    policy_status(&server, "db", "pg", "pg generation 2 realized on b", |p| {
        realized(p, 1, 1)
    })
    .await;
    assert!(b.hub.serving());
    e1.abort();
    e2.abort();
    b.stop().await;
    assert_eq!(
        lease_holder(&server),
        None,
        "the last replica released the lease"
    );
}
