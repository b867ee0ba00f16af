//! Tests against a mocked API server: the identity ConfigMap scenarios (ApiServerVerifier
//! style: each request checked and answered in order), and [`run`](super::run()) end to end.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bulkhead_policy::{AllocationTable, WorkloadRef};
use http::Method;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::fixtures::*;
use super::identities::{IdentityStore, StoreError, TABLE_KEY};
use super::mock::{self, Handle, next, reply, status, watch_reply};
use super::{Config, convert};
use crate::sync::SyncHub;

const CM_PATH: &str = "/api/v1/namespaces/bulkhead/configmaps/ids";

fn table(json: Value) -> AllocationTable {
    serde_json::from_value(json).unwrap()
}

fn configmap(rv: &str, table: &Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": "ids", "namespace": "bulkhead", "resourceVersion": rv},
           "data": {TABLE_KEY: table.to_string()}})
}

/// Expects a request `method path`, returns its body and the way to answer it.
async fn expect(handle: &mut Handle, method: Method, path: &str) -> (Value, mock::Send) {
    let (r, send) = next(handle).await;
    assert_eq!((&r.method, r.path.as_str()), (&method, path), "{}", r.query);
    (r.body, send)
}

fn stored_table(body: &Value) -> AllocationTable {
    serde_json::from_str(body["data"][TABLE_KEY].as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn a_missing_configmap_is_an_empty_table_and_the_first_write_creates_it() {
    let (client, mut handle) = mock::client();
    let api = tokio::spawn(async move {
        let (_, send) = expect(&mut handle, Method::GET, CM_PATH).await;
        send.send_response(status(404, "NotFound"));
        let (body, send) = expect(
            &mut handle,
            Method::POST,
            "/api/v1/namespaces/bulkhead/configmaps",
        )
        .await;
        assert_eq!(body["metadata"]["name"], "ids");
        assert!(body["metadata"]["resourceVersion"].is_null());
        assert_eq!(stored_table(&body), table(json!({"w:a": 256})));
        let mut created = body.clone();
        created["metadata"]["resourceVersion"] = json!("1");
        send.send_response(reply(201, &created));
        handle
    });
    let (mut store, loaded) = IdentityStore::load(client, "bulkhead", "ids")
        .await
        .unwrap();
    assert_eq!(loaded, AllocationTable::new());
    assert!(store.store(&table(json!({"w:a": 256}))).await.unwrap());
    // The same table again: no request (the mock would see one and fail the next test step).
    assert!(!store.store(&table(json!({"w:a": 256}))).await.unwrap());
    api.await.unwrap();
}

#[tokio::test]
async fn a_conflicting_write_reads_again_and_retries_when_ours_contains_theirs() {
    let (client, mut handle) = mock::client();
    let api = tokio::spawn(async move {
        let (_, send) = expect(&mut handle, Method::GET, CM_PATH).await;
        send.send_response(reply(200, &configmap("1", &json!({"w:a": 256}))));
        let (body, send) = expect(&mut handle, Method::PUT, CM_PATH).await;
        assert_eq!(body["metadata"]["resourceVersion"], "1");
        send.send_response(status(409, "Conflict"));
        // Someone rewrote the same table (resource version 2).
        let (_, send) = expect(&mut handle, Method::GET, CM_PATH).await;
        send.send_response(reply(200, &configmap("2", &json!({"w:a": 256}))));
        let (body, send) = expect(&mut handle, Method::PUT, CM_PATH).await;
        assert_eq!(body["metadata"]["resourceVersion"], "2");
        assert_eq!(stored_table(&body), table(json!({"w:a": 256, "w:b": 257})));
        let mut written = body.clone();
        written["metadata"]["resourceVersion"] = json!("3");
        send.send_response(reply(200, &written));
        // The next write uses the new resource version.
        let (body, send) = expect(&mut handle, Method::PUT, CM_PATH).await;
        assert_eq!(body["metadata"]["resourceVersion"], "3");
        send.send_response(reply(200, &body));
    });
    let (mut store, loaded) = IdentityStore::load(client, "bulkhead", "ids")
        .await
        .unwrap();
    assert_eq!(loaded, table(json!({"w:a": 256})));
    let grown = table(json!({"w:a": 256, "w:b": 257}));
    assert!(store.store(&grown).await.unwrap());
    assert_eq!(store.stored(), &grown);
    let grown = table(json!({"w:a": 256, "w:b": 257, "w:c": 258}));
    assert!(store.store(&grown).await.unwrap());
    api.await.unwrap();
}

#[tokio::test]
async fn numbers_another_controller_allocated_stop_the_write() {
    let (client, mut handle) = mock::client();
    let api = tokio::spawn(async move {
        let (_, send) = expect(&mut handle, Method::GET, CM_PATH).await;
        send.send_response(reply(200, &configmap("1", &json!({"w:a": 256}))));
        let (_, send) = expect(&mut handle, Method::PUT, CM_PATH).await;
        send.send_response(status(409, "Conflict"));
        let (_, send) = expect(&mut handle, Method::GET, CM_PATH).await;
        send.send_response(reply(
            200,
            &configmap("2", &json!({"w:a": 256, "w:x": 257})),
        ));
    });
    let (mut store, _) = IdentityStore::load(client, "bulkhead", "ids")
        .await
        .unwrap();
    let err = store
        .store(&table(json!({"w:a": 256, "w:b": 257})))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Diverged { key, .. } if key == "w:x"),
        "{err}"
    );
    assert!(err.to_string().contains("ConfigMap bulkhead/ids"), "{err}");
    api.await.unwrap();
}

#[tokio::test]
async fn a_malformed_table_names_the_configmap_and_key() {
    let (client, mut handle) = mock::client();
    let api = tokio::spawn(async move {
        let (_, send) = expect(&mut handle, Method::GET, CM_PATH).await;
        let mut cm = configmap("1", &json!({}));
        cm["data"][TABLE_KEY] = json!("[1, 2]");
        send.send_response(reply(200, &cm));
    });
    let err = IdentityStore::load(client, "bulkhead", "ids")
        .await
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .starts_with(&format!("ConfigMap bulkhead/ids: data.{TABLE_KEY}: ")),
        "{err}"
    );
    api.await.unwrap();
}

/// The mocked cluster for `run`: lists by path, watch streams the test can feed, the identity
/// ConfigMap with optimistic concurrency. Records the hub's revision at each table write.
struct Cluster {
    lists: BTreeMap<&'static str, Vec<Value>>,
    configmap: Option<Value>,
    watches: BTreeMap<String, mpsc::Sender<Value>>,
    /// (hub revision when the write arrived, table written).
    writes: Vec<(u64, AllocationTable)>,
    /// Status patches and created Events: (path, body).
    reports: Vec<(String, Value)>,
}

const PODS: &str = "/api/v1/pods";

fn v(o: impl serde::Serialize) -> Value {
    serde_json::to_value(o).unwrap()
}

fn cluster_lists() -> BTreeMap<&'static str, Vec<Value>> {
    BTreeMap::from([
        (
            "/api/v1/namespaces",
            vec![
                v(namespace("shop", json!({"team": "shop"}))),
                v(namespace("db", json!({}))),
            ],
        ),
        ("/api/v1/nodes", vec![v(node("n1")), v(node("n2"))]),
        (
            PODS,
            vec![
                pod_json("shop", "web", "n1", json!({"app": "web"}), Some("10.0.0.1")),
                pod_json(
                    "shop",
                    "client",
                    "n2",
                    json!({"app": "client"}),
                    Some("10.0.0.2"),
                ),
                pod_json("db", "pg", "n2", json!({"app": "pg"}), Some("10.0.1.1")),
            ],
        ),
        (
            "/apis/networking.k8s.io/v1/networkpolicies",
            vec![v(netpol("shop", "web", "web", 8080, 1))],
        ),
        (
            "/apis/bulkhead.dev/v1alpha1/segmentationpolicies",
            vec![v(segpol("db", "pg", seg_spec("pg", 5432), 1))],
        ),
        (
            "/apis/bulkhead.dev/v1alpha1/clustersegmentationpolicies",
            vec![],
        ),
    ])
}

async fn serve(mut handle: Handle, cluster: Arc<Mutex<Cluster>>, hub: SyncHub) {
    loop {
        let (r, send) = next(&mut handle).await;
        let mut c = cluster.lock().unwrap();
        if r.path == CM_PATH && r.method == Method::GET {
            match &c.configmap {
                Some(cm) => send.send_response(reply(200, cm)),
                None => send.send_response(status(404, "NotFound")),
            }
        } else if r.path.starts_with("/api/v1/namespaces/bulkhead/configmaps") {
            let rv = c
                .configmap
                .as_ref()
                .map(|cm| cm["metadata"]["resourceVersion"].clone());
            if rv.clone().unwrap_or(Value::Null) != r.body["metadata"]["resourceVersion"] {
                send.send_response(status(409, "Conflict"));
                continue;
            }
            let next_rv = rv
                .and_then(|v| v.as_str()?.parse::<u64>().ok())
                .unwrap_or(0)
                + 1;
            let mut cm = r.body.clone();
            cm["metadata"]["resourceVersion"] = json!(next_rv.to_string());
            c.writes.push((hub.revision(), stored_table(&cm)));
            c.configmap = Some(cm.clone());
            send.send_response(reply(200, &cm));
        } else if r.method == Method::PATCH && r.path.ends_with("/status")
            || r.method == Method::POST && r.path.contains("/events")
        {
            c.reports.push((r.path.clone(), r.body.clone()));
            send.send_response(reply(200, &r.body));
        } else if r.is_watch() {
            let (response, tx) = watch_reply();
            c.watches.insert(r.path.clone(), tx);
            send.send_response(response);
        } else if let Some(items) = c.lists.get(r.path.as_str()) {
            send.send_response(reply(
                200,
                &json!({"apiVersion": "v1", "kind": "List",
                        "metadata": {"resourceVersion": "10"}, "items": items}),
            ));
        } else {
            send.send_response(status(404, "NotFound"));
        }
    }
}

/// A mocked cluster serving `lists` (and the identity ConfigMap `configmap`), with its client
/// and a hub.
fn start_cluster(
    lists: BTreeMap<&'static str, Vec<Value>>,
    configmap: Option<Value>,
) -> (kube::Client, SyncHub, Arc<Mutex<Cluster>>) {
    let (client, handle) = mock::client();
    let hub = SyncHub::default();
    let cluster = Arc::new(Mutex::new(Cluster {
        lists,
        configmap,
        watches: BTreeMap::new(),
        writes: Vec::new(),
        reports: Vec::new(),
    }));
    tokio::spawn(serve(handle, cluster.clone(), hub.clone()));
    (client, hub, cluster)
}

/// Waits (failure guard only) until `f` holds.
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let guard = tokio::time::Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(
            tokio::time::Instant::now() < guard,
            "gave up waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn policies() -> Vec<bulkhead_policy::PolicyObject> {
    vec![
        convert::network_policy(&netpol("shop", "web", "web", 8080, 1)).object,
        convert::segmentation_policy(&segpol("db", "pg", seg_spec("pg", 5432), 1)).object,
    ]
}

fn namespaces() -> Vec<(&'static str, BTreeMap<String, String>)> {
    vec![
        ("db", BTreeMap::new()),
        (
            "shop",
            serde_json::from_value(json!({"team": "shop"})).unwrap(),
        ),
    ]
}

fn workloads(pods: &[Value]) -> Vec<bulkhead_policy::model::Workload> {
    pods.iter()
        .map(|p| {
            let pod = serde_json::from_value(p.clone()).unwrap();
            convert::pod(&pod).unwrap().workload
        })
        .collect()
}

/// The hub's view of every node equals a hub fed with a fresh compile of the same objects.
fn assert_same_views(
    hub: &SyncHub,
    want: bulkhead_policy::CompiledState,
    nodes: &[&str],
    pods: &[Value],
) {
    let fresh_hub = SyncHub::default();
    let mut assignment = crate::sync::NodeAssignment::new();
    for n in nodes {
        assignment.insert((*n).to_owned(), BTreeMap::new());
    }
    for p in pods {
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(p.clone()).unwrap();
        let e = convert::pod(&pod).unwrap();
        assignment
            .entry(e.node.clone())
            .or_default()
            .insert(e.reference(), e.uid.clone());
    }
    fresh_hub.update(want, &assignment);
    for n in nodes {
        assert_eq!(
            hub.view(n).unwrap().view,
            fresh_hub.view(n).unwrap().view,
            "node {n}"
        );
    }
}

#[tokio::test]
async fn run_publishes_what_a_fresh_compile_gives_and_stores_identities_first() {
    let (client, hub, cluster) = start_cluster(cluster_lists(), None);
    let config = Config::new("bulkhead", "ids");
    let runner = tokio::spawn(super::run(client, hub.clone(), config));
    until("the initial publication", || hub.revision() > 0).await;
    let (writes, stored) = {
        let c = cluster.lock().unwrap();
        (c.writes.clone(), c.writes.last().unwrap().1.clone())
    };
    // The table was written before anything was published, once.
    assert_eq!(writes.len(), 1);
    assert_eq!(writes[0].0, 0);
    let pods = cluster_lists()[PODS].clone();
    let want = fresh(&stored, policies(), &namespaces(), workloads(&pods));
    assert_eq!(
        stored.entries().len(),
        want.identities.len() - 4,
        "reserved identities aside"
    );
    assert_same_views(&hub, want, &["n1", "n2"], &pods);
    // A new pod with a new label set: its number is stored before the revision using it.
    let first = hub.revision();
    let new_pod = pod_json("shop", "api", "n1", json!({"app": "api"}), Some("10.0.0.7"));
    let tx = cluster.lock().unwrap().watches[PODS].clone();
    tx.send(json!({"type": "ADDED", "object": new_pod}))
        .await
        .unwrap();
    until("the pod's publication", || hub.revision() > first).await;
    let c = cluster.lock().unwrap();
    assert_eq!(c.writes.len(), 2);
    assert_eq!(c.writes[1].0, first, "written before the revision using it");
    let stored = c.writes[1].1.clone();
    drop(c);
    let mut pods = pods;
    pods.push(new_pod);
    let want = fresh(&stored, policies(), &namespaces(), workloads(&pods));
    assert_same_views(&hub, want, &["n1", "n2"], &pods);
    runner.abort();
}

#[tokio::test]
async fn a_restart_keeps_every_identity_number() {
    // The stored table numbers `client` before `web` the other way round from a fresh
    // allocation (which numbers keys in sorted order): a restart must keep the stored numbers.
    let pods = cluster_lists()[PODS].clone();
    let fresh_numbers = fresh(
        &AllocationTable::new(),
        policies(),
        &namespaces(),
        workloads(&pods),
    );
    let mut entries: BTreeMap<String, u32> = BTreeMap::new();
    for (id, info) in &fresh_numbers.identities {
        if let bulkhead_policy::IdentityInfo::Workload(ls) = info {
            entries.insert(ls.key(), *id);
        }
    }
    let numbers: Vec<u32> = entries.values().copied().collect();
    let reversed: BTreeMap<String, u32> = entries
        .keys()
        .cloned()
        .zip(numbers.iter().rev().copied())
        .collect();
    let (client, hub, cluster) = start_cluster(
        cluster_lists(),
        Some(configmap("5", &serde_json::to_value(&reversed).unwrap())),
    );
    let runner = tokio::spawn(super::run(
        client,
        hub.clone(),
        Config::new("bulkhead", "ids"),
    ));
    until("the initial publication", || hub.revision() > 0).await;
    // Nothing new was allocated, so nothing was written; every pod has its stored number.
    assert!(cluster.lock().unwrap().writes.is_empty());
    let view = hub.view("n1").unwrap().view;
    let web = view
        .workloads
        .iter()
        .find(|(p, _)| p.name == "web")
        .map(|(_, id)| *id)
        .unwrap();
    let web_key = fresh_numbers
        .identities
        .iter()
        .find_map(|(id, info)| match info {
            bulkhead_policy::IdentityInfo::Workload(ls)
                if fresh_numbers.workloads[&WorkloadRef::new("shop", "web")].identity == *id =>
            {
                Some(ls.key())
            }
            _ => None,
        })
        .unwrap();
    assert_eq!(web, reversed[&web_key]);
    assert_ne!(
        web, entries[&web_key],
        "the test must distinguish the two numberings"
    );
    runner.abort();
}

#[tokio::test]
async fn the_leader_reports_status_and_events_from_what_nodes_acknowledged() {
    use crate::events::PolicyEvents;
    use crate::status::StatusWriter;
    let mut lists = cluster_lists();
    let mut bad = seg_spec("pg", 5432);
    bad["ingress"][0]["expiresAt"] = json!("not a time");
    lists
        .get_mut("/apis/bulkhead.dev/v1alpha1/segmentationpolicies")
        .unwrap()
        .push(v(segpol("db", "pg-bad", bad, 3)));
    let (client, hub, cluster) = start_cluster(lists, None);
    let controller = super::Controller::new(
        hub.clone(),
        Config::new("bulkhead", "ids"),
        Arc::new(crate::metrics::Metrics::default()),
    );
    let run = controller.clone();
    let run_client = client.clone();
    let runner = tokio::spawn(async move { run.run(run_client).await });
    let reporter = kube::runtime::events::Reporter {
        controller: "bulkhead-controller".into(),
        instance: Some("c-0".into()),
    };
    let reports = tokio::spawn(super::report::report(
        controller.clone(),
        StatusWriter::new(client.clone()),
        PolicyEvents::new(client, reporter),
        Duration::from_millis(20),
    ));
    let pg = "/apis/bulkhead.dev/v1alpha1/namespaces/db/segmentationpolicies/pg/status";
    let status_of = |path: &str, f: &dyn Fn(&Value) -> bool| {
        cluster
            .lock()
            .unwrap()
            .reports
            .iter()
            .any(|(p, body)| p == path && f(&body["status"]))
    };
    let condition = |s: &Value, t: &str| -> String {
        s["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == t))
            .map(|c| c["status"].as_str().unwrap_or_default().to_owned())
            .unwrap_or_default()
    };
    // pg runs on n2, which has acknowledged nothing: 1 desired, 0 realized.
    until("pg's first status", || {
        status_of(pg, &|s| {
            s["desiredNodes"] == 1
                && s["realizedNodes"] == 0
                && condition(s, "Realized") == "False"
                && condition(s, "Valid") == "True"
        })
    })
    .await;
    hub.acknowledge_for_test("n2", hub.revision());
    until("pg realized", || {
        status_of(pg, &|s| {
            s["realizedNodes"] == 1 && condition(s, "Realized") == "True"
        })
    })
    .await;
    // The invalid policy: Valid=False with the field, at its generation, and a Warning Event.
    let bad_path = "/apis/bulkhead.dev/v1alpha1/namespaces/db/segmentationpolicies/pg-bad/status";
    until("pg-bad's status", || {
        status_of(bad_path, &|s| {
            s["observedGeneration"] == 3 && condition(s, "Valid") == "False"
        })
    })
    .await;
    until("the InvalidPolicy event", || {
        cluster.lock().unwrap().reports.iter().any(|(p, body)| {
            p.contains("/events")
                && body["reason"] == "InvalidPolicy"
                && body["regarding"]["name"] == "pg-bad"
                && body["note"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("expiresAt")
        })
    })
    .await;
    // NetworkPolicies get no status writes.
    assert!(
        !cluster
            .lock()
            .unwrap()
            .reports
            .iter()
            .any(|(p, _)| p.contains("networkpolicies"))
    );
    reports.abort();
    runner.abort();
}

#[tokio::test]
async fn a_replica_leads_only_while_elected() {
    let (client, hub, cluster) = start_cluster(cluster_lists(), None);
    let controller = super::Controller::new(
        hub.clone(),
        Config::new("bulkhead", "ids"),
        Arc::new(crate::metrics::Metrics::default()),
    );
    let (elected, leading) = tokio::sync::watch::channel(false);
    let reporter = kube::runtime::events::Reporter {
        controller: "bulkhead-controller".into(),
        instance: Some("c-0".into()),
    };
    let replica = controller.clone();
    let task = tokio::spawn(async move {
        super::lead::lead_when_elected(
            &replica,
            &client,
            &reporter,
            Duration::from_millis(20),
            leading,
        )
        .await
    });
    // A standby: refuses enforcers, not ready, publishes and writes nothing.
    until("standing by", || !hub.serving()).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(hub.revision(), 0);
    assert!(cluster.lock().unwrap().writes.is_empty());
    let ready = controller.ready();
    assert!(!ready.load(std::sync::atomic::Ordering::Acquire));
    // Elected: publishes, then serves and is ready.
    elected.send_replace(true);
    until("leading", || {
        hub.serving() && ready.load(std::sync::atomic::Ordering::Acquire)
    })
    .await;
    assert!(hub.revision() > 0);
    // Deposed: stands by again; a new term reloads and publishes again.
    elected.send_replace(false);
    until("deposed", || {
        !hub.serving() && !ready.load(std::sync::atomic::Ordering::Acquire)
    })
    .await;
    elected.send_replace(true);
    until("leading again", || hub.serving()).await;
    // The elector stops: so does the replica.
    drop(elected);
    task.await.unwrap().unwrap();
    assert!(!hub.serving());
}
