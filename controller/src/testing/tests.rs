//! Unit tests of the fake API server's parts without HTTP: routing, selectors, the store's write
//! rules and its watch replay. The protocol as kube-rs sees it is tested in `tests/fakeapi.rs`.

use serde_json::{Value, json};

use super::http::parse_query;
use super::resource::{BUILTIN, ResourceType, Route};
use super::select::Selector;
use super::store::{ObjectKey, PatchKind, Store, WatchRequest, merge_patch};

fn pods() -> ResourceType {
    ResourceType::of::<k8s_openapi::api::core::v1::Pod>()
}

fn pod_key(name: &str) -> ObjectKey {
    ObjectKey {
        resource: pods(),
        namespace: "shop".into(),
        name: name.into(),
    }
}

fn pod(name: &str, app: &str) -> Value {
    json!({"metadata": {"name": name, "labels": {"app": app}}, "spec": {"nodeName": "node-a"}})
}

fn drain(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<hyper::body::Bytes>,
) -> Vec<(String, Value)> {
    let mut events = Vec::new();
    while let Ok(line) = rx.try_recv() {
        let event: Value = serde_json::from_slice(&line).expect("event is JSON");
        events.push((
            event["type"].as_str().unwrap_or("").to_string(),
            event["object"].clone(),
        ));
    }
    events
}

fn watch_pods(
    store: &Store,
    from: Option<u64>,
    labels: Option<&str>,
) -> tokio::sync::mpsc::UnboundedReceiver<hyper::body::Bytes> {
    store.watch(WatchRequest {
        resource: pods(),
        namespace: None,
        selector: Selector::parse(labels, None).expect("selector parses"),
        from,
        bookmarks: true,
        initial_events: false,
    })
}

#[test]
fn builtin_types_match_their_kube_rs_types() {
    use k8s_openapi::api::{coordination::v1::Lease, core::v1, networking::v1::NetworkPolicy};
    let expected = [
        ResourceType::of::<v1::Pod>(),
        ResourceType::of::<v1::Namespace>(),
        ResourceType::of::<v1::ServiceAccount>(),
        ResourceType::of::<v1::Node>(),
        ResourceType::of::<v1::ConfigMap>(),
        ResourceType::of::<v1::Event>(),
        ResourceType::of::<NetworkPolicy>(),
        ResourceType::of::<Lease>(),
        ResourceType::of::<k8s_openapi::api::events::v1::Event>(),
        ResourceType::of::<bulkhead_policy::model::SegmentationPolicy>(),
        ResourceType::of::<bulkhead_policy::model::ClusterSegmentationPolicy>(),
    ];
    assert_eq!(BUILTIN, expected.as_slice());
}

#[test]
fn routes_name_collections_objects_and_status() {
    let served = BUILTIN.to_vec();
    let route = |p: &str| Route::parse(p, &served);
    let r = route("/api/v1/pods").expect("all pods");
    assert_eq!(
        (r.resource.plural.as_ref(), r.namespace, r.name, r.status),
        ("pods", None, None, false)
    );
    let r = route("/api/v1/namespaces/shop/pods/web/status").expect("pod status");
    assert_eq!(
        (r.namespace.as_deref(), r.name.as_deref(), r.status),
        (Some("shop"), Some("web"), true)
    );
    let r = route("/api/v1/namespaces/shop").expect("a namespace");
    assert_eq!(
        (r.resource.plural.as_ref(), r.name.as_deref()),
        ("namespaces", Some("shop"))
    );
    let r = route("/api/v1/namespaces/shop/status").expect("a namespace's status");
    assert_eq!(
        (r.resource.plural.as_ref(), r.name.as_deref(), r.status),
        ("namespaces", Some("shop"), true)
    );
    let r =
        route("/apis/bulkhead.dev/v1alpha1/clustersegmentationpolicies/x").expect("cluster policy");
    assert_eq!(
        (r.resource.kind.as_ref(), r.namespace, r.name.as_deref()),
        ("ClusterSegmentationPolicy", None, Some("x"))
    );
    // A namespaced object needs its namespace; a cluster-scoped one has none; unknown types 404.
    assert_eq!(route("/api/v1/pods/web"), None);
    assert_eq!(route("/api/v1/namespaces/shop/nodes"), None);
    assert_eq!(route("/apis/apps/v1/deployments"), None);
    assert_eq!(route("/version"), None);
}

#[test]
fn label_and_field_selectors() {
    let obj = json!({"metadata": {"name": "web", "labels": {"app": "web", "tier": "front"}}, "spec": {"nodeName": "n1"}});
    let matches =
        |l: Option<&str>, f: Option<&str>| Selector::parse(l, f).expect("parses").matches(&obj);
    assert!(matches(None, None));
    assert!(matches(Some("app=web,tier"), None));
    assert!(matches(
        Some("app==web,!missing,tier in (front, back)"),
        None
    ));
    assert!(!matches(Some("app!=web"), None));
    assert!(!matches(Some("tier notin (front)"), None));
    assert!(matches(Some("missing notin (x)"), None));
    assert!(!matches(Some("missing"), None));
    assert!(matches(None, Some("metadata.name=web,spec.nodeName!=n2")));
    assert!(!matches(None, Some("spec.nodeName=n2")));
    assert!(Selector::parse(Some("app bogus (x)"), None).is_err());
    assert!(Selector::parse(None, Some("nofield")).is_err());
}

#[test]
fn merge_patch_merges_objects_and_removes_nulls() {
    let mut target = json!({"a": {"b": 1, "c": 2}, "l": [1, 2], "k": "v"});
    merge_patch(
        &mut target,
        &json!({"a": {"b": null, "d": 3}, "l": [3], "k": null}),
    );
    assert_eq!(target, json!({"a": {"c": 2, "d": 3}, "l": [3]}));
}

#[test]
fn writes_set_server_metadata_and_check_versions() {
    let store = Store::new(BUILTIN.to_vec());
    let created = store
        .create(&pods(), Some("shop"), pod("web", "web"))
        .expect("created");
    assert_eq!(created["kind"], "Pod");
    assert_eq!(created["apiVersion"], "v1");
    assert_eq!(created["metadata"]["generation"], 1);
    assert_eq!(created["metadata"]["namespace"], "shop");
    let rv = created["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_string();
    let err = store
        .create(&pods(), Some("shop"), pod("web", "web"))
        .expect_err("taken");
    assert_eq!((err.code, err.reason), (409, "AlreadyExists"));

    // A label change keeps the generation, a spec change bumps it.
    let relabeled = store
        .patch(
            &pod_key("web"),
            json!({"metadata": {"labels": {"app": "api"}}}),
            PatchKind::Merge,
            false,
        )
        .expect("patched");
    assert_eq!(relabeled["metadata"]["generation"], 1);
    assert_eq!(relabeled["metadata"]["uid"], created["metadata"]["uid"]);
    let respec = store
        .patch(
            &pod_key("web"),
            json!({"spec": {"nodeName": "node-b"}}),
            PatchKind::Apply,
            false,
        )
        .expect("applied");
    assert_eq!(respec["metadata"]["generation"], 2);

    // A replace with the first resourceVersion is stale.
    let mut stale = created.clone();
    stale["metadata"]["resourceVersion"] = json!(rv);
    let err = store
        .replace(&pod_key("web"), stale, false)
        .expect_err("stale");
    assert_eq!((err.code, err.reason), (409, "Conflict"));

    // The main resource keeps the status; /status changes only the status.
    let with_status = store
        .patch(
            &pod_key("web"),
            json!({"status": {"phase": "Running"}, "spec": {"nodeName": "x"}}),
            PatchKind::Merge,
            true,
        )
        .expect("status patched");
    assert_eq!(with_status["status"]["phase"], "Running");
    assert_eq!(with_status["spec"]["nodeName"], "node-b");
    let main = store
        .patch(
            &pod_key("web"),
            json!({"status": {"phase": "Failed"}}),
            PatchKind::Merge,
            false,
        )
        .expect("main patched");
    assert_eq!(main["status"]["phase"], "Running");

    // Apply creates a missing object; a status patch of a missing object is 404.
    store
        .patch(&pod_key("new"), pod("new", "x"), PatchKind::Apply, false)
        .expect("apply creates");
    let err = store
        .patch(
            &pod_key("gone"),
            json!({"status": {}}),
            PatchKind::Apply,
            true,
        )
        .expect_err("missing");
    assert_eq!(err.code, 404);
}

#[test]
fn delete_waits_for_finalizers() {
    let store = Store::new(BUILTIN.to_vec());
    let mut body = pod("web", "web");
    body["metadata"]["finalizers"] = json!(["bulkhead.dev/cleanup"]);
    store.create(&pods(), Some("shop"), body).expect("created");
    let marked = store.delete(&pod_key("web")).expect("marked");
    assert!(marked["metadata"]["deletionTimestamp"].is_string());
    assert!(store.get(&pod_key("web")).is_ok());
    store
        .patch(
            &pod_key("web"),
            json!({"metadata": {"finalizers": null}}),
            PatchKind::Merge,
            false,
        )
        .expect("finalizer removed");
    assert_eq!(store.get(&pod_key("web")).expect_err("deleted").code, 404);
}

#[test]
fn watches_replay_history_follow_selectors_and_expire() {
    let store = Store::new(BUILTIN.to_vec());
    let first = store
        .create(&pods(), Some("shop"), pod("a", "web"))
        .expect("a");
    let after_a: u64 = first["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("rv");
    store
        .create(&pods(), Some("shop"), pod("b", "web"))
        .expect("b");

    // From "0": the current objects; from a resourceVersion: what happened after it.
    let kinds = |events: &[(String, Value)]| {
        events
            .iter()
            .map(|(t, o)| format!("{t} {}", o["metadata"]["name"].as_str().unwrap_or("")))
            .collect::<Vec<_>>()
    };
    let mut all = watch_pods(&store, None, None);
    assert_eq!(kinds(&drain(&mut all)), ["ADDED a", "ADDED b"]);
    let mut resumed = watch_pods(&store, Some(after_a), None);
    assert_eq!(kinds(&drain(&mut resumed)), ["ADDED b"]);

    // Live: a relabel leaves a selector's watch as DELETED, enters it as ADDED.
    let mut web = watch_pods(&store, Some(store.revision()), Some("app=web"));
    store
        .patch(
            &pod_key("a"),
            json!({"metadata": {"labels": {"app": "db"}}}),
            PatchKind::Merge,
            false,
        )
        .expect("relabel");
    store
        .patch(
            &pod_key("a"),
            json!({"metadata": {"labels": {"app": "web"}}}),
            PatchKind::Merge,
            false,
        )
        .expect("back");
    store.delete(&pod_key("b")).expect("deleted");
    assert_eq!(
        kinds(&drain(&mut web)),
        ["DELETED a", "ADDED a", "DELETED b"]
    );
    assert_eq!(
        kinds(&drain(&mut all)),
        ["MODIFIED a", "MODIFIED a", "DELETED b"]
    );

    // Bookmarks carry the current revision.
    store.send_bookmarks();
    let bookmark = drain(&mut all);
    assert_eq!(bookmark[0].0, "BOOKMARK");
    assert_eq!(
        bookmark[0].1["metadata"]["resourceVersion"],
        store.revision().to_string()
    );

    // After the history expires, resuming from before gets one 410 ERROR and the end.
    store.expire_history();
    let mut expired = watch_pods(&store, Some(after_a), None);
    let events = drain(&mut expired);
    assert_eq!(events.len(), 1);
    assert_eq!(
        (
            events[0].0.as_str(),
            &events[0].1["code"],
            &events[0].1["reason"]
        ),
        ("ERROR", &json!(410), &json!("Expired"))
    );
    assert!(expired.is_closed());
    // Resuming from the current revision still works, and dropping watches ends them.
    let mut current = watch_pods(&store, Some(store.revision()), None);
    assert!(drain(&mut current).is_empty());
    assert_eq!(store.open_watches(), 4);
    store.drop_watches();
    assert!(current.is_closed() && all.is_closed());
}

#[test]
fn query_parameters_are_percent_decoded() {
    let q = parse_query(
        "&watch=true&labelSelector=app%3Dweb%2Ctier+in+%28a%2Cb%29&fieldSelector=metadata.name%3Dx&bad=%zz",
    );
    assert_eq!(q["watch"], "true");
    assert_eq!(q["labelSelector"], "app=web,tier in (a,b)");
    assert_eq!(q["fieldSelector"], "metadata.name=x");
    assert_eq!(q["bad"], "%zz");
}
